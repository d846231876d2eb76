"""inferoute.procs: free ports, child output capture, bounded waits, group stop."""

from __future__ import annotations

import socket
import sys

import pytest

from inferoute.procs import ChildProcess, free_port_range, port_free


def test_free_port_range_is_bindable() -> None:
    base = free_port_range(4)
    for i in range(4):
        assert port_free(base + i)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base))
        assert not port_free(base)


def test_child_output_is_captured_and_wait_for_line_returns_the_match() -> None:
    code = ("import time; print('booting'); print('serving on 1234', flush=True); "
            "time.sleep(30)")
    with ChildProcess([sys.executable, "-c", code], name="child") as child:
        line = child.wait_for_line(r"serving on (\d+)", timeout=20)
        assert "1234" in line
        assert "booting" in child.log()
        assert child.alive()
    assert not child.alive()


def test_a_child_that_dies_fails_the_wait_with_its_output() -> None:
    code = "print('config error: no pools'); raise SystemExit(3)"
    child = ChildProcess([sys.executable, "-c", code], name="dying")
    with pytest.raises(RuntimeError, match="config error: no pools"):
        child.wait_for_line("never printed", timeout=20)
    child.stop()


def test_stop_ends_a_child_that_ignores_sigterm() -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)")
    child = ChildProcess([sys.executable, "-c", code], name="stubborn")
    child.wait_for_line("up", timeout=20)
    child.stop(timeout=1)
    assert not child.alive()



_LEAVER = """
import os, subprocess, sys, time
from inferoute.procs import ChildProcess

pids = sys.argv[1]
if sys.argv[2:3] == ["child"]:  # the child: start a grandchild, say both pids, wait
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pids + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {g.pid}")
    os.rename(pids + ".tmp", pids)
    time.sleep(600)
else:  # the parent: start the child, wait for its pids, exit without stopping it
    c = ChildProcess([sys.executable, __file__, pids, "child"], name="left")
    while not os.path.exists(pids):
        time.sleep(0.02)
    if "--wait" in sys.argv:  # until a signal ends it
        print("ready", flush=True)
        time.sleep(600)
"""


def test_children_left_running_are_stopped_when_the_interpreter_exits(tmp_path) -> None:
    """A parent that exits without stopping its child (a test cut short by its timeout, an
    exception past the `with`) leaves nothing behind: the exit hook stops the child's group,
    grandchildren included."""
    import subprocess
    script, pids = tmp_path / "leaver.py", tmp_path / "pids"
    script.write_text(_LEAVER)
    subprocess.run([sys.executable, str(script), str(pids)], check=True, timeout=120)
    # the parent has exited, and its exit hook waited for the group to go
    for pid in map(int, pids.read_text().split()):
        assert _gone(pid), pid


def test_children_are_stopped_when_the_parent_gets_sigterm(tmp_path) -> None:
    """`kill` (SIGTERM) of a command that started children, as a supervisor or a CI timeout
    stops it, leaves nothing behind either: Python's default would end it at once, before
    its exit hook."""
    import os
    import signal
    import subprocess
    script, pids = tmp_path / "leaver.py", tmp_path / "pids"
    script.write_text(_LEAVER)
    parent = subprocess.Popen([sys.executable, str(script), str(pids), "--wait"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        os.kill(parent.pid, signal.SIGTERM)
        assert parent.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        parent.kill()
    for pid in map(int, pids.read_text().split()):
        assert _gone(pid), pid


def _gone(pid: int) -> bool:
    """`pid` has exited (reaped, or a zombie waiting for its reaper)."""
    import os
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1].startswith("Z")
    except (ProcessLookupError, FileNotFoundError):
        return True
