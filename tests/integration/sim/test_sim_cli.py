"""`inferoute sim` as a command: start-up errors, clean shutdown, one process for N replicas."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request

from .conftest import free_port_range, start_sim


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferoute", "sim", *args],
                          capture_output=True, text=True, timeout=60)


def test_bad_flags_give_clear_errors():
    r = _run("--port", "8000")
    assert r.returncode == 2 and "--model is required" in r.stderr
    r = _run("--model", "m", "--profile", "no-such-profile")
    assert r.returncode == 2 and "unknown profile" in r.stderr
    r = _run("--model", "m", "--fault-kinds", "500,boom")
    assert r.returncode == 2 and "boom" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_is_reported_without_traceback():
    port = free_port_range(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = _run("--model", "m", "--port", str(port), "--profile", "tiny")
    assert r.returncode == 1 and "error" in r.stderr
    assert "Traceback" not in r.stderr


def test_sigint_stops_all_replicas_cleanly():
    sim = start_sim(replicas=3)
    try:
        for i in range(3):
            with urllib.request.urlopen(sim.url(i) + "/health") as resp:
                assert resp.status == 200
                assert resp.headers["x-inferoute-sim-replica"] == \
                    f"sim-{i}@127.0.0.1:{sim.port + i}"
        sim.proc.send_signal(signal.SIGINT)
        assert sim.proc.wait(timeout=10) == 0
    finally:
        sim.stop()
    assert "Traceback" not in "".join(sim.lines)
