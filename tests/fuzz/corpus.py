"""A deterministic corpus of malformed requests for the gateway and the endpoint picker.

Every field of every endpoint with wrong types and extremes, nesting, broken and odd JSON,
content encodings, headers, methods and paths. `cases()` yields `Case`s with distinct
(method, path, headers, body); the same list every run, no randomness. Slow and idle
connections are in tests/integration/reliability/test_connection_limits.py.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

MODEL = "m"
API = {
    "/v1/completions": {"model": MODEL, "prompt": "hello", "max_tokens": 3},
    "/v1/chat/completions": {"model": MODEL, "max_tokens": 3,
                             "messages": [{"role": "user", "content": "hello"}]},
    "/v1/responses": {"model": MODEL, "input": "hello", "max_output_tokens": 3},
}
COMMON = ["model", "stream", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
          "frequency_penalty", "logprobs", "top_logprobs", "best_of", "stream_options", "user",
          "logit_bias", "metadata", "tools", "tool_choice", "response_format", "top_k",
          "min_p", "repetition_penalty"]
FIELDS = {
    "/v1/completions": ["prompt", "max_tokens", "echo", "suffix", *COMMON],
    "/v1/chat/completions": ["messages", "max_tokens", "max_completion_tokens",
                             "messages.0.role", "messages.0.content", "messages.0.tool_calls",
                             *COMMON],
    "/v1/responses": ["input", "max_output_tokens", "instructions", *COMMON],
}
#: deep nesting as raw JSON text, spliced in where a value goes
DEEP = {"deep300": "[" * 300 + "1" + "]" * 300, "deepobj300": '{"a":' * 300 + "1" + "}" * 300}
BAD_VALUES: list[object] = [
    None, True, 0, -1, 2 ** 63, 1.5, 1e308, "", "x", "\ud83d\ude00" * 3, [], [1, "a"], {},
    {"type": "weird"}, "deep300", "deepobj300",
]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def raw(self) -> bytes:
        """The request as bytes on the wire (Connection: close, Content-Length set)."""
        hdrs = dict(self.headers)
        hdrs.setdefault("Host", "127.0.0.1")
        hdrs.setdefault("Connection", "close")
        if self.method not in ("GET", "HEAD") or self.body:
            hdrs.setdefault("Content-Length", str(len(self.body)))
            hdrs.setdefault("Content-Type", "application/json")
        head = f"{self.method} {self.path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items())
        return head.encode("utf-8", "surrogateescape") + b"\r\n" + self.body


def parse_answer(answer: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """A whole HTTP/1.1 response read until close: (status, lower-case headers, body with any
    chunked framing removed); (None, {}, b"") for no bytes at all."""
    if not answer:
        return None, {}, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return int(lines[0].split()[1]), headers, body


def _with(base: dict, dotted: str, value: object) -> bytes:
    body = json.loads(json.dumps(base))
    keys = dotted.split(".")
    target = body
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    deep = value if isinstance(value, str) and value in DEEP else None
    last: object = int(keys[-1]) if isinstance(target, list) else keys[-1]
    target[last] = "@@DEEP@@" if deep else value  # type: ignore[index]
    text = json.dumps(body, ensure_ascii=False)
    if deep:
        text = text.replace('"@@DEEP@@"', DEEP[deep])
    return text.encode("utf-8", "surrogatepass")


def field_cases() -> Iterator[Case]:
    """Every field of every endpoint set to every bad value."""
    for path, base in API.items():
        for name in FIELDS[path]:
            for value in BAD_VALUES:
                label = value if isinstance(value, str) and value in DEEP else repr(value)[:20]
                yield Case(f"{path} {name}={label}", "POST", path, _with(base, name, value))


def raw_body_cases() -> Iterator[Case]:
    """Bodies that are not a JSON object, or not JSON, or not UTF-8."""
    bodies = [b"", b" ", b"{", b"}", b"[]", b"null", b"1", b'"s"', b"true", b"{]",
              b'{"model": "m",}', b'{"model": "m" "prompt": "x"}', b"{'model': 'm'}",
              b'{"model": "m", "prompt": "x"', b'{"model": "m", "prompt": NaN}',
              b'{"model": "m", "prompt": Infinity}', b'{"model": "m", "max_tokens": 1e999}',
              b'{"model": "m", "max_tokens": 99999999999999999999999}',
              b'{"model": "\xff\xfe", "prompt": "x"}', b'{"model": "m", "prompt": "\xc3\x28"}',
              b"\xef\xbb\xbf{}", b"\x00" * 16, b'{"model": "m"}\x00',
              b'{"model": "m", "prompt": "x"} trailing', b'{"a": 1}{"b": 2}',
              b'{"model": "m", "model": 5, "prompt": "x"}',
              b'{"model": "m", "prompt": "\\ud800"}',
              "{\"model\": \"m\", \"prompt\": \"caf\u00e9\"}".encode("latin-1"),
              b"\xff\xfe{\x00}\x00", b"[" * 2000 + b"]" * 2000]
    for path in API:
        for i, body in enumerate(bodies):
            yield Case(f"{path} raw#{i}", "POST", path, body)


def encoding_cases() -> Iterator[Case]:
    good = json.dumps(API["/v1/completions"]).encode()
    encoded = [("gzip", b"\x1f\x8b garbage"), ("gzip", gzip.compress(b"not json")),
               ("gzip", gzip.compress(good)[:-8]), ("deflate", b"garbage"),
               ("deflate", zlib.compress(b"[1, 2")), ("br", b"garbage"),
               ("zstd", b"garbage"), ("compress", good), ("gzip, gzip", good),
               ("identity", b"{"), ("x-unknown", good)]
    for path in API:
        for i, (enc, body) in enumerate(encoded):
            yield Case(f"{path} Content-Encoding {enc}#{i}", "POST", path, body,
                       (("Content-Encoding", enc),))


def header_cases() -> Iterator[Case]:
    body = json.dumps(API["/v1/completions"]).encode()
    headers = [("Expect", "junk"), ("Expect", "200-ok"), ("Content-Type", "text/html"),
               ("Content-Type", "application/json; charset=latin-1"),
               ("Authorization", "Bearer \udcff\udcfe"), ("x-api-key", "\udcc3("),
               ("x-gateway-inference-objective", "\udcff"),
               ("x-gateway-inference-objective", "x" * 4000),
               ("x-gateway-inference-fairness-id", "\udcff" * 10),
               ("x-gateway-destination-endpoint", "10.9.9.9:1"),
               ("x-request-id", "\udcff"), ("X-Header-" + "a" * 100, "v"),
               ("Content-Length", "-1"), ("Content-Length", "abc"),
               ("Content-Length", "99999999999999999999"), ("Transfer-Encoding", "gzip"),
               ("Transfer-Encoding", "chunked, identity"), ("Host", ""),
               ("Big", "v" * 9000)]
    for path in ("/v1/completions", "/v1/chat/completions"):
        for name, value in headers:
            yield Case(f"{path} header {name[:30]}: {value[:10]!r}", "POST", path, body,
                       ((name, value),))


def method_path_cases() -> Iterator[Case]:
    for path in [*API, "/v1/models", "/metrics", "/ready", "/health"]:
        for method in ("GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"):
            yield Case(f"{method} {path}", method, path)
    odd = ["/", "/v1", "/v1/", "/v1/completions/", "//v1/completions", "/v1/completions%00",
           "/v1/../v1/completions", "/V1/COMPLETIONS", "/v1/completions?stream=%ff",
           "/v1/chat/completions?" + "a=1&" * 500, "/" + "a" * 4000, "/v1/embeddings",
           "/%zz", "/v1/completions;x"]
    for path in odd:
        yield Case(f"POST {path[:40]}", "POST", path,
                   json.dumps(API["/v1/completions"]).encode())


def cases() -> list[Case]:
    """The whole corpus, each case distinct."""
    out = [*field_cases(), *raw_body_cases(), *encoding_cases(), *header_cases(),
           *method_path_cases()]
    seen = set()
    unique = []
    for c in out:
        key = (c.method, c.path, c.headers, c.body)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique
