"""Read the OpenAI `usage` object out of a response body that arrives in arbitrary pieces.

Server-sent events (`text/event-stream`) are scanned line by line as they pass, keeping only the
unfinished last line, and only `data:` lines that mention "usage" are decoded (vLLM sends usage
in the final chunk when `stream_options.include_usage` is set). A plain JSON body is kept up to
a bound and decoded at the end. Memory stays bounded whatever the body size.
"""

from __future__ import annotations

from typing import Any

import orjson

#: a JSON response larger than this is passed through without reading its usage
MAX_JSON_BODY = 4 * 1024 * 1024
#: an SSE line longer than this is skipped (no real usage chunk is that long)
MAX_SSE_LINE = 1024 * 1024


class UsageReader:
    """Feed body pieces with `feed`; `usage` holds the last usage object seen (or None)."""

    def __init__(self, event_stream: bool) -> None:
        self.event_stream = event_stream
        self.usage: dict[str, Any] | None = None
        self.bytes_seen = 0
        self.chunks_seen = 0
        self._buf = bytearray()
        self._overflow = False

    def feed(self, piece: bytes, end: bool = False) -> None:
        self.bytes_seen += len(piece)
        if piece:
            self.chunks_seen += 1
        if self.event_stream:
            self._feed_sse(piece, end)
        else:
            self._feed_json(piece, end)

    def _feed_sse(self, piece: bytes, end: bool) -> None:
        if self._overflow:
            # inside an over-long line: skip to its end
            nl = piece.find(b"\n")
            if nl < 0:
                return
            piece = piece[nl + 1:]
            self._overflow = False
        self._buf += piece
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            self._line(bytes(self._buf[start:nl]))
            start = nl + 1
        del self._buf[:start]
        if end and self._buf:
            self._line(bytes(self._buf))
            self._buf.clear()
        elif len(self._buf) > MAX_SSE_LINE:
            self._buf.clear()
            self._overflow = True

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        payload = line[5:].strip()
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]

    def _feed_json(self, piece: bytes, end: bool) -> None:
        if not self._overflow:
            if len(self._buf) + len(piece) > MAX_JSON_BODY:
                self._overflow = True
                self._buf = bytearray()
            else:
                self._buf += piece
        if end and not self._overflow and self._buf:
            try:
                obj = orjson.loads(self._buf)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                self.usage = obj["usage"]
            self._buf = bytearray()
