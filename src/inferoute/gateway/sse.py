"""Reading the OpenAI `usage` object out of a response while its bytes are relayed.

The proxy forwards every chunk untouched and also feeds it here. For a server-sent-events
stream only complete `data:` lines that mention `"usage"` are decoded (with stream options
`include_usage` vLLM puts it in the final chunk; the Responses API puts it in
`response.completed`); the last non-null one wins. A plain JSON response is kept up to a
bound and decoded once at the end.
"""

from __future__ import annotations

from typing import Any

import orjson

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

    __slots__ = ("stream", "usage", "events", "_pending", "_body", "_overflow")

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.usage: dict[str, Any] | None = None
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
            if _USAGE in raw:
                try:
                    self.usage = _usage_of(orjson.loads(raw)) or self.usage
                except orjson.JSONDecodeError:
                    pass
        return self.usage
