"""Token usage is always known: ask the upstream for it, hide it from clients that did not ask.

`prepare_upstream_body` sets `stream_options.include_usage` on streaming chat/completions
requests whose client did not ask (and rewrites `model` for routing rules) in one serialisation.
`ResponseRewriter` then filters the SSE stream the client sees, chunk by chunk (an event may be
split across chunks, or several may share one): it records the usage, drops the usage-only final
chunk when the client did not ask for it, and writes the client-facing model name back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..sse import event_end, has_usage, usage_in

__all__ = ["prepare_upstream_body", "ResponseRewriter", "rewrite_response_model", "total_tokens",
           "UpstreamBody"]


@dataclass(slots=True, frozen=True)
class UpstreamBody:
    body: bytes
    #: the client asked for usage itself (so the usage chunk must reach it)
    client_wants_usage: bool
    #: include_usage was added by the gateway
    injected: bool


def prepare_upstream_body(body: dict[str, Any], *, api: str, target_model: str | None = None,
                          inject_usage: bool = True) -> UpstreamBody:
    """Serialise `body` for the upstream: model rewritten, include_usage injected if needed.

    Only streaming `completions`/`chat` requests need the injection: non-streaming responses and
    the Responses API always carry usage.
    """
    out = body
    if target_model is not None and body.get("model") != target_model:
        out = {**out, "model": target_model}
    so = body.get("stream_options")
    asked = isinstance(so, dict) and so.get("include_usage") is True
    injected = False
    if inject_usage and not asked and body.get("stream") is True and api in ("chat",
                                                                              "completions"):
        if so is None or isinstance(so, dict):
            out = {**out, "stream_options": {**(so or {}), "include_usage": True}}
            injected = True
    return UpstreamBody(orjson.dumps(out), asked, injected)


def _model_patterns(target: str, client: str) -> list[tuple[bytes, bytes]]:
    t, c = orjson.dumps(target), orjson.dumps(client)
    return [(b'"model":' + t, b'"model":' + c), (b'"model": ' + t, b'"model": ' + c)]


def rewrite_response_model(payload: bytes, target: str, client: str) -> bytes:
    """A JSON response (or one SSE data payload) with `model` set back to the client's name."""
    if target == client or b'"model"' not in payload:
        return payload
    for old, new in _model_patterns(target, client):
        if old in payload:
            return payload.replace(old, new, 1)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if isinstance(obj, dict) and obj.get("model") == target:
        obj["model"] = client
        return orjson.dumps(obj)
    return payload


def total_tokens(usage: dict[str, Any] | None) -> int | None:
    """total_tokens, or prompt + completion (input + output for the Responses API)."""
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens",
                                    "output_tokens")]
    nums = [p for p in parts if isinstance(p, int)]
    return sum(nums) if nums else None


class ResponseRewriter:
    """Filters an SSE byte stream for the client: see the module docstring.

    `feed(chunk)` returns the bytes to send now (complete events only; a partial event is held
    until its end arrives); `finish()` returns whatever is left. `usage` holds the last usage
    seen. Bytes pass through untouched when there is nothing to change.
    """

    #: a bound on one held partial event, so a broken upstream cannot grow the buffer forever
    MAX_EVENT = 8 * 1024 * 1024

    def __init__(self, *, strip_usage: bool, target_model: str | None = None,
                 client_model: str | None = None) -> None:
        self.strip_usage = strip_usage
        self.rewrite = False
        self._patterns: list[tuple[bytes, bytes]] = []
        self._target = self._client = ""
        if target_model is not None and client_model is not None and target_model != client_model:
            self.rewrite = True
            self._patterns = _model_patterns(target_model, client_model)
            self._target, self._client = target_model, client_model
        self._buf = bytearray()
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        if not self._buf and chunk.endswith(b"\n\n") and not has_usage(chunk):
            # fast path: whole events and no usage; at most a byte-level model rename
            if not self.rewrite:
                return chunk
            for old, new in self._patterns:
                if old in chunk:
                    return chunk.replace(old, new)
        self._buf += chunk
        out = bytearray()
        while True:
            end, sep = event_end(self._buf)
            if end < 0:
                break
            event = bytes(self._buf[:end + sep])
            del self._buf[:end + sep]
            out += self._event(event)
        if len(self._buf) > self.MAX_EVENT:  # not SSE as we know it: pass it on unchanged
            out += self._buf
            self._buf.clear()
        return bytes(out)

    def finish(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if b'"usage"' not in event and not self.rewrite:
            return event
        lines = event.split(b"\n")
        changed = False
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            if has_usage(payload):
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    obj = None
                usage = usage_in(obj)
                if usage is not None:
                    self.usage = usage
                    # the final usage-only chunk: `choices` is an empty list
                    if self.strip_usage and obj.get("choices") == [] and obj.get("usage"):
                        return b""
            if self.rewrite:
                new = rewrite_response_model(payload, self._target, self._client)
                if new is not payload:
                    lines[i] = b"data: " + new + (b"\r" if line.endswith(b"\r") else b"")
                    changed = True
        return b"\n".join(lines) if changed else event
