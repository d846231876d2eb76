"""Real processes on 127.0.0.1 for the gateway tests: stand-in servers, `inferoute sim`,
`inferoute serve`, each on free ports, stopped (and their logs checked) at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import http.client
import json as jsonlib
import urllib.error
import urllib.request

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """A base port with base..base+n-1 free right now (for `inferoute sim --replicas n`)."""
    for _ in range(100):
        base = free_port()
        ok = True
        for i in range(1, n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
                    break
        if ok and base + n < 65536:
            return base
    raise RuntimeError("no free port range")


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(args: list[str], port: int) -> Proc:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("INFEROUTE_API_KEYS", None)  # a developer's keys would turn authentication on
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    p = Proc(proc, port)
    assert proc.stdout is not None
    threading.Thread(target=lambda: p.lines.extend(proc.stdout), daemon=True).start()
    return p


@dataclass
class Resp:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self):  # type: ignore[no-untyped-def]
        return jsonlib.loads(self.content)


def request(method: str, url: str, *, json: object = None, content: bytes | None = None,
            timeout: float = 10.0) -> Resp:
    """One HTTP request with the standard library; error statuses are returned, not raised."""
    data = content if json is None else jsonlib.dumps(json).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as err:
        return Resp(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def get(url: str, timeout: float = 10.0) -> Resp:
    return request("GET", url, timeout=timeout)


def post(url: str, **kw: object) -> Resp:
    return request("POST", url, **kw)  # type: ignore[arg-type]


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection,
                                               http.client.HTTPResponse]:
    """POST `body` and return the connection and the response with headers read."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("POST", "/" + rest, body=jsonlib.dumps(body),
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def wait_http(url: str, timeout: float = 30.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = get(url, timeout=2)
            if r.status_code == status:
                return
            last = r.status_code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} not answering {status} after {timeout}s (last: {last})")


def stop_checked(p: Proc) -> None:
    """Stop `p`; its output must be free of tracebacks."""
    p.stop()
    log = p.log()
    assert "Traceback" not in log and "Error handling request" not in log, log


class Harness:
    """Starts stand-ins, simulators and gateways for one test and stops them all after it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []

    def standin(self, *extra: str) -> Proc:
        port = free_port()
        p = spawn(["inferoute.gateway.standin", "--port", str(port), *extra], port)
        self.procs.append(p)
        wait_http(p.url + "/health")
        return p

    def sim(self, replicas: int) -> list[str]:
        """`inferoute sim` with `replicas` tiny replicas; their URLs."""
        base = free_ports(replicas)
        p = spawn(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                   "--replicas", str(replicas), "--profile", "tiny"], base)
        self.procs.append(p)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(replicas)]
        for url in urls:
            wait_http(url + "/health")
        return urls

    def dead_url(self) -> str:
        """A loopback URL nothing listens on."""
        return f"http://127.0.0.1:{free_port()}"

    def gateway(self, config: dict, *, wait_ready: bool = True) -> Proc:
        port = free_port()
        cfg = dict(config, host="127.0.0.1", port=port)
        f = self.tmp_path / f"serve-{port}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        p = spawn(["inferoute", "serve", "--config", str(f), "--log-level", "warning"], port)
        self.procs.append(p)
        try:
            wait_http(p.url + ("/ready" if wait_ready else "/health"))
        except RuntimeError:
            raise RuntimeError("gateway did not start:\n" + p.log()) from None
        return p

    def close(self) -> None:
        """Stop every process first, then check their logs (so a failed check leaks none)."""
        for p in reversed(self.procs):
            p.stop()
        for p in self.procs:
            stop_checked(p)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


class Http:
    """What the tests use to talk HTTP (stdlib only), handed out by the `web` fixture."""

    get = staticmethod(get)
    post = staticmethod(post)
    open_stream = staticmethod(open_stream)
    metric = staticmethod(lambda text, name, **labels: metric_value(text, name, **labels))


@pytest.fixture
def web() -> Http:
    return Http()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels...}` in a Prometheus page (labels a subset)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(rest.rsplit(" ", 1)[1])
    return None
