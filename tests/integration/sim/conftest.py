"""A real `inferoute sim` process on free loopback ports, shared by the simulator's tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(n: int) -> int:
    """A base port such that base..base+n-1 are free right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - n)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range found")


@dataclass
class SimProcess:
    proc: subprocess.Popen
    port: int
    replicas: int
    kv_port: int | None
    replay_port: int | None
    lines: list[str] = field(default_factory=list)

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def start_sim(*extra: str, replicas: int = 2, kv_events: bool = False,
              timeout: float = 30.0) -> SimProcess:
    """Start `python -m inferoute sim` and wait for its "serving" line."""
    port = free_port_range(replicas)
    kv = free_port_range(2 * replicas) if kv_events else None
    args = [sys.executable, "-m", "inferoute", "sim", "--model", "sim-model", "--port", str(port),
            "--replicas", str(replicas), "--profile", "tiny", *extra]
    if kv is not None:
        args += ["--kv-events", "--kv-events-port", str(kv),
                 "--kv-replay-port", str(kv + replicas)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    sim = SimProcess(proc, port, replicas, kv, None if kv is None else kv + replicas)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("sim exited before serving:\n" + "".join(sim.lines))
        sim.lines.append(line)
        if line.startswith("serving"):
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("sim did not start:\n" + "".join(sim.lines))
    # keep draining output so the pipe never blocks the server
    threading.Thread(target=lambda: sim.lines.extend(proc.stdout), daemon=True).start()
    return sim


@pytest.fixture(scope="module")
def sim():
    """Two tiny replicas with KV events and LoRA enabled."""
    s = start_sim("--max-loras", "2", "--lora", "adapter-a", replicas=2, kv_events=True)
    yield s
    rc = s.stop()
    log = "".join(s.lines)
    assert rc == 0, log
    assert "Traceback" not in log and "Error handling request" not in log, log
