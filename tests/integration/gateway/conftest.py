"""Real processes on 127.0.0.1 for the gateway tests: stand-in servers, `inferoute sim`,
`inferoute serve`, each on free ports, stopped (and their logs checked) at teardown."""

from __future__ import annotations

import http.client
import json as jsonlib
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from inferoute.procs import ChildProcess, free_port, free_port_range


class Proc(ChildProcess):
    """A child process serving HTTP on `port`."""

    def __init__(self, argv: list[str], port: int) -> None:
        name = " ".join(a for a in argv[1:4] if a != "-m")
        super().__init__(argv, name=name, unset_env=("INFEROUTE_API_KEYS",))
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def spawn(args: list[str], port: int) -> Proc:
    """`python -m ARGS`, without a developer's INFEROUTE_API_KEYS (they would turn
    authentication on)."""
    return Proc([sys.executable, "-m", *args], port)


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
            timeout: float = 10.0, headers: dict[str, str] | None = None) -> Resp:
    """One HTTP request with the standard library; error statuses are returned, not raised."""
    data = content if json is None else jsonlib.dumps(json).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
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

    def start(self, args: list[str], port: int, ready_path: str = "/health") -> Proc:
        """`python -m ARGS` serving on `port`, kept for teardown; waits for `ready_path`."""
        p = spawn(args, port)
        self.procs.append(p)
        p.wait_for_http(p.url + ready_path)
        return p

    def standin(self, *extra: str) -> Proc:
        port = free_port()
        return self.start(["inferoute.tools.standin", "--port", str(port), *extra], port)

    def sim(self, replicas: int) -> list[str]:
        """`inferoute sim` with `replicas` tiny replicas; their URLs."""
        base = free_port_range(replicas)
        p = self.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                        "--replicas", str(replicas), "--profile", "tiny"], base)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(replicas)]
        for url in urls[1:]:
            p.wait_for_http(url + "/health")
        return urls

    def dead_url(self) -> str:
        """A loopback URL nothing listens on."""
        return f"http://127.0.0.1:{free_port()}"

    def gateway(self, config: dict, *, wait_ready: bool = True,
                flags: tuple[str, ...] = ("--log-level", "warning")) -> Proc:
        """`inferoute serve` with `config` (on a free port) and `flags`."""
        port = free_port()
        f = self.tmp_path / f"serve-{port}.yaml"
        f.write_text(yaml.safe_dump(dict(config, host="127.0.0.1", port=port)))
        return self.start(["inferoute", "serve", "--config", str(f), *flags], port,
                          "/ready" if wait_ready else "/health")

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
    metric = staticmethod(lambda text, name, /, **labels: metric_value(text, name, **labels))


@pytest.fixture
def web() -> Http:
    return Http()


def metric_value(text: str, name: str, /, **labels: str) -> float | None:
    """The value of the sample `name{labels...}` in a Prometheus page (labels a subset; a
    label may be called `name` or `text`)."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(rest.rsplit(" ", 1)[1])
    return None
