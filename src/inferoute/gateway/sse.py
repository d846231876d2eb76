"""Reading the OpenAI `usage` object out of a response while its bytes are relayed.

The proxy forwards every chunk untouched and also feeds it here. For a server-sent-events
stream only complete `data:` lines that mention `"usage"` are decoded (with stream options
`include_usage` vLLM puts it in the final chunk; the Responses API puts it in
`response.completed`); the last non-null one wins. A plain JSON response is kept up to a
bound and decoded once at the end.

`ResponseRelay` decides what the client gets for each upstream chunk (whole SSE events, the
model name written back when a route or alias renamed it, the gateway's injected usage chunk
removed).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..core.admission.usage import ResponseRewriter, rewrite_response_model
from ..core.errors import InferouteError

_USAGE = b'"usage"'
#: longest SSE line or JSON body kept for usage extraction; larger ones are skipped
MAX_KEEP = 4 * 1024 * 1024


def _usage_of(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    response = obj.get("response")  # Responses API: {"type": "response.completed", ...}
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        return response["usage"]
    return None


class UsageTracker:
    """Feed response chunks in order; `usage` is the last usage object seen (or None)."""

    __slots__ = ("stream", "usage", "events", "document", "_pending", "_body", "_overflow")

    def __init__(self, stream: bool) -> None:
        self.stream = stream
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
        if _USAGE not in complete:
            return
        for line in complete.split(b"\n"):
            if line.startswith(b"data:") and _USAGE in line:
                try:
                    usage = _usage_of(orjson.loads(line[5:]))
                except orjson.JSONDecodeError:
                    continue
                if usage is not None:
                    self.usage = usage

    def finish(self) -> dict[str, Any] | None:
        """Call once the body ended; decodes a buffered JSON body or a last unterminated line."""
        if self.stream:
            if self._pending:
                self._feed_sse(b"\n")
        elif self._body and not self._overflow:
            raw = b"".join(self._body)
            self._body.clear()
            if _USAGE in raw or self.document is not None:
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    obj = None
                self.usage = _usage_of(obj) or self.usage
                if self.document is not None and isinstance(obj, dict):
                    self.document = obj
        return self.usage

    def keep_document(self) -> None:
        """Also decode a plain JSON body in `finish()` into `document` (for caching)."""
        if self.document is None:
            self.document = {}


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


class ResponseRelay:
    """Turns upstream body chunks into what the client gets.

    Event streams go out in whole events (so a failure can always end them cleanly); when a
    `ResponseRewriter` is given (model name written back, gateway-injected usage chunk dropped)
    it does that work. A plain body passes through untouched, unless the model name must be
    written back, in which case it is held (bounded) and renamed at the end.
    """

    def __init__(self, stream: bool, rewriter: ResponseRewriter | None = None,
                 rename: tuple[str, str] | None = None) -> None:
        self.stream = stream
        self.rewriter = rewriter
        self.rename = rename
        self._held = b""
        self._body: list[bytes] | None = [] if (rename and not stream) else None
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.stream:
            if self.rewriter is not None:
                return self.rewriter.feed(chunk)
            out, self._held = split_events(self._held + chunk if self._held else chunk)
            return out
        if self._body is not None:
            self._body.append(chunk)
            self._size += len(chunk)
            if self._size <= MAX_KEEP:
                return b""
            out, self._body = b"".join(self._body), None  # too big to rename: pass it on
            return out
        return chunk

    def finish(self) -> bytes:
        if self.stream:
            if self.rewriter is not None:
                return self.rewriter.finish()
            out, self._held = self._held, b""
            return out
        if self._body is not None and self.rename is not None:
            body, self._body = b"".join(self._body), None
            return rewrite_response_model(body, *self.rename)
        return b""

    def fail(self, error: InferouteError) -> bytes | None:
        """Bytes that end an event stream cleanly after an upstream failure (the held partial
        event is dropped); None for a plain body, which the caller must cut off."""
        if not self.stream:
            return None
        self._held = b""
        if self.rewriter is not None:
            self.rewriter.finish()
        return b"data: " + orjson.dumps(error.to_dict()) + b"\n\ndata: [DONE]\n\n"
