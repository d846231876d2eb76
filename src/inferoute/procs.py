"""Child processes on 127.0.0.1: free ports, `python -m inferoute ...` children with bounded
output, readiness waits and a clean stop.

The demo, the overhead benchmark, the benchmarks and the integration tests all start real
processes on loopback; this module is the one place that knows how. Every wait is bounded by a
timeout and fails with the child's last output lines, so a child that dies at startup explains
itself instead of leaving a caller hanging.
"""

from __future__ import annotations

import atexit
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"


def port_free(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 right now."""
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections and `bind(port 0)` (Linux), or the usual one."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


class _PortAllocator:
    """Hands out ports on 127.0.0.1 that nothing else is about to take.

    A port the kernel picked (`bind(0)`) and released is exactly what it hands the next
    outgoing connection, so a test that opens many client sockets can lose the port before
    its server binds it (`Address already in use`). These ports come from below the kernel's
    ephemeral range, where it never allocates; each process walks the range from its own
    offset (by PID) and never hands out a port twice, so parallel test processes rarely meet,
    and a port still bound (or in TIME_WAIT) by anyone is skipped.
    """

    def __init__(self) -> None:
        lo, _ = _ephemeral_range()
        self.low, self.high = 10_000, min(lo, 32_768)
        if self.high - self.low < 2_000:  # an unusual ephemeral range: leave it to the kernel
            self.low = self.high = 0
        span = max(1, self.high - self.low)
        self._next = self.low + (os.getpid() * 7919) % span
        self._given: set[int] = set()
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """A base port with base..base+n-1 all free now and never handed out before."""
        with self._lock:
            if self.high == 0:
                return self._kernel_pick(n)
            span = self.high - self.low
            for _ in range(span):
                base = self._next
                self._next = base + n if base + n < self.high else self.low
                ports = range(base, base + n)
                if base + n <= self.high and not self._given.intersection(ports) \
                        and all(port_free(p) for p in ports):
                    self._given.update(ports)
                    return base
            raise RuntimeError(f"no {n} consecutive free ports on {LOOPBACK}")

    def _kernel_pick(self, n: int) -> int:
        for _ in range(200):
            with socket.socket() as s:
                s.bind((LOOPBACK, 0))
                base = int(s.getsockname()[1])
            if base + n <= 65536 and all(port_free(base + i) for i in range(n)):
                return base
        raise RuntimeError(f"no {n} consecutive free ports on {LOOPBACK}")


_ports = _PortAllocator()


def free_port() -> int:
    """A free port on 127.0.0.1 for a server this process is about to start (see
    `_PortAllocator`: outside the kernel's ephemeral range, never handed out twice)."""
    return _ports.take(1)


def free_port_range(n: int) -> int:
    """A base port such that base..base+n-1 are free on 127.0.0.1 (for servers that take
    consecutive ports, like `inferoute sim --replicas n`)."""
    return _ports.take(n)


def http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int:
    """The status of one plain HTTP request (error statuses returned, not raised); OSError when
    nothing answers."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def wait_for_http(url: str, timeout: float = 30.0, status: int = 200,
                  alive: Callable[[], bool] | None = None) -> None:
    """Poll `url` until it answers `status`; RuntimeError after `timeout` seconds, or as soon as
    `alive()` turns false (the server died)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{url}: the server exited (last: {last})")
        try:
            got = http_status(url)
            if got == status:
                return
            last = got
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} not answering {status} after {timeout:g}s (last: {last})")


#: every ChildProcess not yet stopped (held strongly: one dropped without `stop()` must still be
#: found at exit; pruned of exited ones on each start, so it holds only live children)
_running: set[ChildProcess] = set()


def _exit_on_sigterm() -> None:
    """Make SIGTERM end this interpreter through its exit path (`finally` blocks, then
    `_stop_leftovers`), so that `kill`, a CI job's timeout or a supervisor stopping a demo
    stops its children too: by default SIGTERM ends Python at once and leaves them running,
    each in its own session. Only from the main thread, and only where nobody has chosen a
    SIGTERM handler (a server that drains on SIGTERM keeps its own)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@atexit.register
def _stop_leftovers() -> None:
    """At interpreter exit, stop the process group of every child still running: a run cut
    short (a test's timeout, Ctrl-C, an exception past the `with`) leaves no server behind.
    Its own session keeps a child out of the terminal's SIGINT, so nothing else would."""
    for child in list(_running):
        child.stop(timeout=5.0)


class ChildProcess:
    """A child process whose merged stdout/stderr is read by a thread into a bounded buffer
    (the last `keep` lines), so its pipe never fills and its output can explain a failure.

    It runs in its own process group: `stop()` signals the whole group, so anything it spawned
    goes too. Use it as a context manager to stop it on the way out; one still running when
    the interpreter exits (SIGTERM included) is stopped then. `preexec_fn` (e.g. CPU pinning)
    is only safe while the caller has no other threads, i.e. for its first child.
    """

    def __init__(self, argv: list[str], *, name: str | None = None,
                 env: Mapping[str, str] | None = None, unset_env: Iterable[str] = (),
                 keep: int = 5000, preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name or " ".join(argv[:3])
        _exit_on_sigterm()
        full_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        for key in unset_env:
            full_env.pop(key, None)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", env=full_env,
                                     start_new_session=True,
                                     preexec_fn=preexec_fn)  # noqa: PLW1509 (caller's choice)
        #: the last `keep` output lines (oldest dropped first)
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._count = 0  # lines read so far, including dropped ones
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"out:{self.name}", daemon=True)
        self._reader.start()
        _running.difference_update([c for c in _running if c.proc.poll() is not None])
        _running.add(self)

    @classmethod
    def inferoute(cls, *args: str, **kw: object) -> ChildProcess:
        """`python -m inferoute ARGS` with this interpreter."""
        kw.setdefault("name", " ".join(["inferoute", *args[:1]]))
        return cls([sys.executable, "-m", "inferoute", *args], **kw)  # type: ignore[arg-type]

    @classmethod
    def module(cls, module: str, *args: str, **kw: object) -> ChildProcess:
        """`python -m MODULE ARGS` with this interpreter."""
        kw.setdefault("name", module)
        return cls([sys.executable, "-m", module, *args], **kw)  # type: ignore[arg-type]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._count += 1
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """The kept output, joined."""
        with self._cond:
            return "".join(self.lines)

    def tail(self, n: int = 20) -> str:
        """The last `n` output lines, for error messages."""
        with self._cond:
            return "".join(list(self.lines)[-n:])

    def _fail(self, what: str) -> RuntimeError:
        self.stop()
        return RuntimeError(f"{self.name}: {what}:\n{self.tail(40)}")

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> str:
        """The first output line (from the start) that `pattern` matches at its beginning. On
        timeout or exit the child is stopped and RuntimeError carries its output."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pos = 0
        with self._cond:
            while True:
                start = max(pos, self._count - len(self.lines))
                for line in list(self.lines)[start - (self._count - len(self.lines)):]:
                    if rx.match(line):
                        return line
                pos = self._count
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise self._fail(f"no line matching {rx.pattern!r} "
                         + ("before it exited" if self._eof else f"after {timeout:g}s"))

    def wait_for_http(self, url: str, timeout: float = 30.0, status: int = 200) -> None:
        """Until `url` answers `status`; fails early if the child exits."""
        try:
            wait_for_http(url, timeout, status, alive=self.alive)
        except RuntimeError as exc:
            raise self._fail(str(exc)) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` to the child's process group, wait up to `timeout` s, then kill the
        group; the exit code (negative: killed by that signal)."""
        _running.discard(self)
        if self.proc.poll() is None:
            self._signal_group(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._reader.join(timeout=2)
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence), stopped by `stop()`."""

    child: ChildProcess
    port: int

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> int:
        return self.child.stop(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path, timeout: float = 10.0, attempts: int = 3) -> RedisServer | None:
    """A redis-server on a free port, answering PING; None when `redis-server` is not on PATH.
    Retries on a fresh port if another process took the probed one first."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    for _ in range(attempts):
        port = free_port()
        child = ChildProcess([binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                              "--appendonly", "no", "--dir", str(workdir),
                              "--protected-mode", "yes"], name="redis-server", keep=200)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and child.alive():
            if _redis_pong(port):
                return RedisServer(child, port)
            time.sleep(0.05)
        child.stop(timeout=5)
    raise RuntimeError(f"redis-server did not start:\n{child.tail()}")
