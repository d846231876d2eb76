"""What the client gets for each upstream chunk, sans-I/O: `ResponseRelay` (whole SSE events, the
model name written back when a route or alias renamed it, the gateway's injected usage chunk
removed). The request lifecycle feeds it; the framing is `sse.py`'s."""

from __future__ import annotations

from .admission.usage import ResponseRewriter, rewrite_response_model
from .errors import InferouteError
from .sse import MAX_KEEP, error_event, split_events

__all__ = ["ResponseRelay"]


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
        return error_event(error.to_dict())
