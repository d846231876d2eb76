"""Real processes for the precise-routing tests: `inferoute sim --kv-events` and redis-server,
on free 127.0.0.1 ports. Redis tests skip, with the reason, when the binary is missing."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> int:
    """A base such that base..base+n-1 are free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - n)
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


@dataclass
class Sim:
    proc: subprocess.Popen
    port: int
    kv_port: int
    replay_port: int
    replicas: int
    lines: list[str] = field(default_factory=list)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_sim(replicas: int = 2, model: str = "M") -> Sim:
    port, kv = free_ports(replicas), free_ports(2 * replicas)
    args = [sys.executable, "-m", "inferoute", "sim", "--model", model, "--port", str(port),
            "--replicas", str(replicas), "--profile", "tiny", "--kv-events",
            "--kv-events-port", str(kv), "--kv-replay-port", str(kv + replicas)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    sim = Sim(proc, port, kv, kv + replicas, replicas)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("sim exited:\n" + "".join(sim.lines))
        sim.lines.append(line)
        if line.startswith("serving"):
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("sim did not start:\n" + "".join(sim.lines))
    threading.Thread(target=lambda: sim.lines.extend(proc.stdout), daemon=True).start()
    return sim


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = start_sim()
    yield s
    rc = s.stop()
    out = "".join(s.lines)
    assert rc == 0 and "Traceback" not in out, out


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (install it: apt-get install -y redis-server)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_ports(1)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
