"""Fuzzed bad input against one running `inferoute serve` (hypothesis, bounded examples).

Malformed JSON, wrong types, huge fields, bad headers, truncated bodies, non-UTF-8 bytes, deeply
nested JSON and wrong content types, sent over raw sockets: every one gets a 4xx OpenAI-style
JSON error (a truncated body may instead have its connection closed), never a 5xx or a stack
trace. Afterwards the gateway still serves a normal request, its in-flight gauges are 0, its
log holds no traceback and its memory did not balloon.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferoute.procs import ChildProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import parse_answer  # noqa: E402

MODEL = "m"
MAX_BODY = 65536
PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/responses"]
FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


class Server(ChildProcess):
    """`python -m ARGS` serving on `port` (without a developer's INFEROUTE_API_KEYS)."""

    def __init__(self, args: list[str], port: int) -> None:
        super().__init__([sys.executable, "-m", *args], name=args[0],
                         unset_env=("INFEROUTE_API_KEYS",))
        self.port = port

    def wait(self, path: str) -> None:
        self.wait_for_http(f"http://127.0.0.1:{self.port}{path}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def raw(port: int, data: bytes, *, half_close: bool = False,
        timeout: float = 10.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; (status or None, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            # the server answered and closed while this was still sending (a head it refused
            # before reading it all, e.g. a 756 kB header): its answer is still to be read
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return parse_answer(b"".join(chunks))


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
         content_length: int | None = None) -> tuple[int | None, dict[str, str], bytes]:
    hdrs = {"Host": "127.0.0.1", "Content-Type": "application/json", "Connection": "close",
            **(headers or {})}
    hdrs["Content-Length"] = str(len(body) if content_length is None else content_length)
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return raw(port, head.encode("latin-1") + b"\r\n" + body)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    up_port = free_port()
    upstream = Server(["inferoute.tools.standin", "--port", str(up_port), "--model", MODEL],
                      up_port)
    upstream.wait("/health")
    port = free_port()
    cfg = tmp_path_factory.mktemp("fuzz") / "serve.yaml"
    cfg.write_text(yaml.safe_dump({
        "host": "127.0.0.1", "port": port, "maxBodyBytes": MAX_BODY,
        "pools": [{"model": MODEL, "endpoints": [f"http://127.0.0.1:{up_port}"]}],
        "admission": {"objectives": [{"name": "critical", "priority": 10}]}}))
    gw = Server(["inferoute", "serve", "--config", str(cfg), "--log-level", "info"], port)
    try:
        gw.wait("/ready")
        assert _normal_request_works(gw)
        gw.rss_before = gw.rss_kib()  # type: ignore[attr-defined]
        yield gw
    finally:
        gw.stop()
        upstream.stop()
    for s in (gw, upstream):
        assert "Traceback" not in s.log(), s.log()


def _normal_request_works(gw: Server) -> bool:
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 3}).encode()
    status, _, answer = post(gw.port, "/v1/completions", body)
    return status == 200 and json.loads(answer)["usage"]["completion_tokens"] == 3


def assert_clean_4xx(answer: tuple[int | None, dict[str, str], bytes],
                     allow_close: bool = False) -> None:
    status, headers, body = answer
    if status is None:
        assert allow_close, "the connection closed without an answer"
        return
    assert 400 <= status < 500, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    err = json.loads(body)["error"]
    assert {"message", "type", "code"} <= set(err), err
    assert "Traceback" not in err["message"]


# -- strategies --------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _not_json(b: bytes) -> bool:
    try:
        json.loads(b)
    except ValueError:
        return True
    return False


malformed = st.one_of(
    st.binary(min_size=1, max_size=300).filter(_not_json),
    st.text(min_size=1, max_size=200).map(str.encode).filter(_not_json),
    st.builds(lambda v, cut: json.dumps({"model": MODEL, "prompt": v}).encode()[:cut],
              json_values, st.integers(1, 12)).filter(_not_json),
)

# a field of the wrong type in an otherwise plausible body
WRONG_TYPES = {
    "model": st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    "prompt": st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False),
                        st.dictionaries(st.text(max_size=3), st.integers(), min_size=1,
                                        max_size=2)),
    "messages": st.one_of(st.none(), st.integers(), st.text(max_size=10),
                          st.lists(st.integers(), min_size=1, max_size=3)),
    "max_tokens": st.one_of(st.text(min_size=1, max_size=5), st.integers(max_value=-1),
                            st.lists(st.integers(), max_size=2), st.booleans()),
    "stream": st.one_of(st.text(min_size=1, max_size=5), st.integers(2, 10),
                        st.lists(st.booleans(), max_size=2)),
}


@st.composite
def wrong_types(draw: st.DrawFn) -> tuple[str, dict]:
    path = draw(st.sampled_from(PATHS[:2]))
    body: dict = ({"model": MODEL, "prompt": "hi"} if path == PATHS[0]
                  else {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    other = "messages" if path == PATHS[0] else "prompt"  # not a field of this API
    field = draw(st.sampled_from(sorted(set(WRONG_TYPES) - {other})))
    body[field] = draw(WRONG_TYPES[field])
    return path, body


# -- the properties ------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(PATHS), body=malformed,
       ctype=st.sampled_from(["application/json", "text/plain",
                              "application/x-www-form-urlencoded",
                              "multipart/form-data; boundary=x", ""]))
def test_malformed_bodies(gateway, path, body, ctype):
    assert_clean_4xx(post(gateway.port, path, body, {"Content-Type": ctype}))


@FUZZ
@given(case=wrong_types())
def test_wrong_types(gateway, case):
    path, body = case
    assert_clean_4xx(post(gateway.port, path, json.dumps(body).encode()))


@FUZZ
@given(path=st.sampled_from(PATHS), field=st.sampled_from(["prompt", "model", "junk"]),
       size=st.integers(MAX_BODY, 4 * MAX_BODY), declared=st.booleans())
def test_huge_fields(gateway, path, field, size, declared):
    body = json.dumps({"model": MODEL, "prompt": "hi", field: "x" * size}).encode()
    if declared:  # the size is known from Content-Length
        assert_clean_4xx(post(gateway.port, path, body))
    else:  # chunked: found while reading
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                           for c in (body[i:i + 16384] for i in range(0, len(body), 16384)))
        assert_clean_4xx(raw(gateway.port, head + chunked + b"0\r\n\r\n"), allow_close=True)


@FUZZ
@given(path=st.sampled_from(PATHS), depth=st.integers(100, 5000),
       kind=st.sampled_from(["list", "dict", "prompt"]))
def test_deeply_nested_json(gateway, path, depth, kind):
    if kind == "list":
        body = b"[" * depth + b"]" * depth
    elif kind == "dict":
        body = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        body = b'{"model": "m", "prompt": ' + b"[" * depth + b"]" * depth + b"}"
    assert_clean_4xx(post(gateway.port, path, body))


@FUZZ
@given(path=st.sampled_from(PATHS), body=st.one_of(
    st.binary(min_size=1, max_size=40).filter(lambda b: _not_utf8(b)).map(
        lambda b: b'{"model": "m", "prompt": "' + b + b'"}'),
    st.just(b'\xff\xfe{\x00"\x00m\x00"\x00}\x00'),
    st.just('{"model": "m", "prompt": "caf\u00e9"}'.encode("latin-1"))))
def test_non_utf8_bodies(gateway, path, body):
    assert_clean_4xx(post(gateway.port, path, body))


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


header_names = st.text(st.characters(codec="ascii", categories=["L", "N"],
                                     include_characters="-_"), min_size=1, max_size=30)
header_values = st.one_of(st.text(st.characters(codec="latin-1", exclude_characters="\r\n"),
                                  max_size=60),
                          st.integers(0, 10 ** 6).map(lambda n: "v" * n).filter(
                              lambda v: len(v) > 9000))


@FUZZ
@given(path=st.sampled_from(PATHS), name=st.one_of(header_names, st.sampled_from(
    ["Content-Length", "Content-Type", "Authorization", "x-gateway-inference-objective",
     "x-gateway-destination-endpoint", "Transfer-Encoding", "Expect", "x-request-id"])),
    value=header_values)
def test_bad_headers(gateway, path, name, value):
    """Odd headers with a body that is itself invalid (so a 200 can never hide a problem)."""
    body = b'{"model": "m", "prompt": 5}'
    hdrs = {"Content-Type": "application/json", "Connection": "close", name: value}
    if name.lower() == "content-length":
        hdrs.pop(name)
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n"
                "Connection: close\r\n\r\n").encode("latin-1")
        answer = raw(gateway.port, head + body, half_close=True)
    else:
        answer = post(gateway.port, path, body, hdrs)
    assert_clean_4xx(answer, allow_close=name.lower() in ("content-length",
                                                          "transfer-encoding"))


@FUZZ
@given(path=st.sampled_from(PATHS), missing=st.integers(1, 5000), sent=st.integers(0, 200))
def test_truncated_bodies(gateway, path, missing, sent):
    """Content-Length promises more than is sent, then the client closes its side."""
    body = json.dumps({"model": MODEL, "prompt": "x " * 100}).encode()[:sent]
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + missing}\r\n\r\n").encode()
    assert_clean_4xx(raw(gateway.port, head + body, half_close=True), allow_close=True)


def test_gateway_unharmed_after_the_fuzzing(gateway):
    """Runs last in this module: still serving, nothing left in flight, memory bounded."""
    assert _normal_request_works(gateway)
    deadline = time.monotonic() + 10
    while True:
        page = raw(gateway.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")[2].decode()
        busy = [line for line in page.splitlines()
                if line.startswith(("inferoute_endpoint_in_flight_requests{",
                                    "inference_objective_running_requests{",
                                    "inference_extension_flow_control_queue_size{"))
                and float(line.rsplit(" ", 1)[1]) != 0]
        if not busy:
            break
        assert time.monotonic() < deadline, busy
        time.sleep(0.05)
    grown = gateway.rss_kib() - gateway.rss_before
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
