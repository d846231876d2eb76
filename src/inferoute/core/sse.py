"""Server-sent events, sans-I/O: the one framer and the one usage parser of the gateway, the
picker and the response rewriter.

`event_end` / `split_events` cut a byte stream into whole events (a blank line, `\n\n` or
`\r\n\r\n`, ends one). `usage_of` reads the OpenAI `usage` object out of a JSON response or one
`data:` payload (the Responses API keeps it in `response.usage`). `UsageTracker` follows a
response fed in arbitrary chunks and keeps the last usage seen: with stream options
`include_usage` vLLM puts it in the final chunk, the Responses API in `response.completed`.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

__all__ = ["error_event", "event_end", "has_usage", "MAX_HELD_EVENT", "MAX_KEEP", "split_events",
           "usage_in", "usage_of", "UsageSource", "UsageTracker"]

_USAGE = b'"usage"'
#: longest SSE line or JSON body kept for usage extraction; larger ones are skipped
MAX_KEEP = 4 * 1024 * 1024


def event_end(buf: bytes | bytearray) -> tuple[int, int]:
    """Index and length of the first event terminator (blank line), or (-1, 0)."""
    a = buf.find(b"\n\n")
    b = buf.find(b"\r\n\r\n")
    if a < 0 and b < 0:
        return -1, 0
    if b >= 0 and (a < 0 or b < a):
        return b, 4
    return a, 2


#: an event stream's incomplete tail is held back until its event ends, up to this size
MAX_HELD_EVENT = 1024 * 1024


def split_events(data: bytes) -> tuple[bytes, bytes]:
    """(complete events to send now, incomplete tail to hold) of an SSE byte stream."""
    end = data.rfind(b"\n\n")
    end = end + 2 if end >= 0 else 0
    crlf = data.rfind(b"\r\n\r\n")
    if crlf >= 0 and crlf + 4 > end:
        end = crlf + 4
    if end == len(data) or len(data) - end > MAX_HELD_EVENT:
        return data, b""
    return data[:end], data[end:]


def error_event(error: dict[str, Any]) -> bytes:
    """An OpenAI-style error (`InferouteError.to_dict()`) as the event that ends a stream
    cleanly, followed by `data: [DONE]`."""
    return b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n"


def usage_in(obj: Any) -> dict[str, Any] | None:
    """The non-null `usage` object of a decoded response or event, if any."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    response = obj.get("response")  # Responses API: {"type": "response.completed", ...}
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        return response["usage"]
    return None


def usage_of(payload: bytes) -> dict[str, Any] | None:
    """The `usage` object of a JSON response or SSE payload, if it has a non-null one."""
    if _USAGE not in payload:
        return None
    try:
        return usage_in(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None


def has_usage(payload: bytes) -> bool:
    """Cheap test for a non-null usage field (chunks often carry `"usage":null`)."""
    n = payload.count(_USAGE)
    return n > 0 and n > payload.count(b'"usage":null') + payload.count(b'"usage": null')


class UsageSource(Protocol):
    """Something fed the same event stream that already reads its usage (`ResponseRewriter`)."""

    usage: dict[str, Any] | None


class UsageTracker:
    """Feed response chunks in order; `usage` is the last usage object seen (or None).

    Given a `source` that reads the same event stream's usage already (the response rewriter),
    a stream's events are only counted here and the usage is the source's: each usage event is
    decoded once."""

    __slots__ = ("stream", "usage", "events", "document", "_source", "_pending", "_body",
                 "_overflow")

    def __init__(self, stream: bool, source: UsageSource | None = None) -> None:
        self.stream = stream
        self._source = source if stream else None
        self.usage: dict[str, Any] | None = None
        #: a plain JSON body, decoded by `finish()` when `keep_document()` asked for it
        self.document: dict[str, Any] | None = None
        #: SSE `data:` events seen (excluding `[DONE]`), a rough count of generated chunks
        self.events = 0
        self._pending = b""
        self._body: list[bytes] = []
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.stream:
            self._feed_sse(chunk)
        elif not self._overflow:
            self._body.append(chunk)
            if sum(map(len, self._body)) > MAX_KEEP:
                self._overflow = True
                self._body.clear()

    def _feed_sse(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        if data.endswith(b"\n"):  # the usual case: whole events, nothing to copy
            complete, self._pending = data, b""
        else:
            cut = data.rfind(b"\n")
            if cut < 0:
                self._pending = data if len(data) <= MAX_KEEP else b""
                return
            complete, self._pending = data[:cut], data[cut + 1:]
        self.events += complete.count(b"data:") - complete.count(b"data: [DONE]")
        if self._source is not None or not has_usage(complete):
            return
        for line in complete.split(b"\n"):  # `"usage":null` chunks are not decoded
            if line.startswith(b"data:") and has_usage(line):
                usage = usage_of(line[5:])
                if usage is not None:
                    self.usage = usage

    def finish(self) -> dict[str, Any] | None:
        """Call once the body ended; decodes a buffered JSON body or a last unterminated line."""
        if self.stream:
            if self._pending:
                self._feed_sse(b"\n")
            if self._source is not None:
                self.usage = self._source.usage
        elif self._body and not self._overflow:
            raw = b"".join(self._body)
            self._body.clear()
            if _USAGE in raw or self.document is not None:
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    obj = None
                self.usage = usage_in(obj) or self.usage
                if self.document is not None and isinstance(obj, dict):
                    self.document = obj
        return self.usage

    def keep_document(self) -> None:
        """Also decode a plain JSON body in `finish()` into `document` (for caching)."""
        if self.document is None:
            self.document = {}
