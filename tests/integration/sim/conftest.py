"""A real `inferoute sim` process on free loopback ports, shared by the simulator's tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from inferoute.procs import ChildProcess, free_port_range


@dataclass
class SimProcess:
    child: ChildProcess
    port: int
    replicas: int
    kv_port: int | None
    replay_port: int | None

    @property
    def proc(self):  # type: ignore[no-untyped-def]
        return self.child.proc

    @property
    def lines(self):  # type: ignore[no-untyped-def]
        return self.child.lines

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def stop(self) -> int:
        return self.child.stop()


def start_sim(*extra: str, replicas: int = 2, kv_events: bool = False,
              timeout: float = 30.0) -> SimProcess:
    """Start `python -m inferoute sim` and wait for its "serving" line."""
    port = free_port_range(replicas)
    kv = free_port_range(2 * replicas) if kv_events else None
    args = ["sim", "--model", "sim-model", "--port", str(port), "--replicas", str(replicas),
            "--profile", "tiny", *extra]
    if kv is not None:
        args += ["--kv-events", "--kv-events-port", str(kv), "--kv-replay-port", str(kv + replicas)]
    child = ChildProcess.inferoute(*args)
    child.wait_for_line("serving", timeout)
    return SimProcess(child, port, replicas, kv, None if kv is None else kv + replicas)


@pytest.fixture(scope="module")
def sim():
    """Two tiny replicas with KV events and LoRA enabled."""
    s = start_sim("--max-loras", "2", "--lora", "adapter-a", replicas=2, kv_events=True)
    yield s
    rc = s.stop()
    log = s.child.log()
    assert rc == 0, log
    assert "Traceback" not in log and "Error handling request" not in log, log
