"""Real processes for the precise-routing tests: `inferoute sim --kv-events` and redis-server,
on free 127.0.0.1 ports (`redis_url` is in tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from inferoute.procs import ChildProcess, free_port_range

free_ports = free_port_range  # the name the test modules import


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `cond` every 20 ms; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


@dataclass
class Sim:
    child: ChildProcess
    port: int
    kv_port: int
    replay_port: int
    replicas: int

    @property
    def lines(self):  # type: ignore[no-untyped-def]
        return self.child.lines

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def stop(self) -> int:
        return self.child.stop()


def start_sim(replicas: int = 2, model: str = "M") -> Sim:
    port, kv = free_ports(replicas), free_ports(2 * replicas)
    child = ChildProcess.inferoute(
        "sim", "--model", model, "--port", str(port), "--replicas", str(replicas),
        "--profile", "tiny", "--kv-events", "--kv-events-port", str(kv),
        "--kv-replay-port", str(kv + replicas))
    child.wait_for_line("serving", 30)
    return Sim(child, port, kv, kv + replicas, replicas)


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = start_sim()
    yield s
    rc = s.stop()
    out = s.child.log()
    assert rc == 0 and "Traceback" not in out, out
