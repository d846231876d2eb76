"""OpenAI-style JSON for the errors aiohttp answers itself, before any route runs.

A request line or header aiohttp's parser rejects (a control character in a header, a header
over the size limit, a bad Content-Length or chunk size) never reaches the application's
middleware: aiohttp answers it with a text/plain page and logs the parser's traceback at ERROR.
A client could fill the log that way, and the OpenAI clients expect a JSON error. `GatewayRunner`
is an `AppRunner` whose connections answer such errors with the usual JSON envelope and log a
client's mistake as one debug line (a 5xx here is a bug and keeps its logged traceback).

The same connection handler bounds the connections themselves (`ConnectionBounds`, from the
serving config's `connections:`): beyond `maxConnections` open at once a new connection gets a
503 JSON answer and is closed before anything is read; a connection whose first request head is
not complete within `headerTimeout` gets a 408 and is closed (later requests on a kept-alive
connection are bounded by aiohttp's keep-alive timeout, which closes a connection that has not
delivered a request head in that time, trickled bytes or not).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..core.errors import BadRequest, InferouteError

log = logging.getLogger("inferoute.gateway")


class UnreadableBody(BadRequest):
    """A request body that could not be read to its end (e.g. gzip that does not inflate):
    the rest of it is still on the connection, so the answer closes the connection."""

    close_connection = True


class BodyTimeout(UnreadableBody):
    """The request body did not arrive within `bodyTimeout`."""

    status = 408
    code = "request_timeout"


class UnsupportedMediaType(InferouteError):
    """A request body in an encoding the gateway cannot decode."""

    status = 415
    error_type = "invalid_request_error"


def error_body(status: int, message: str) -> bytes:
    """The OpenAI error envelope for a protocol-level error."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    try:
        code = HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        code = str(status)
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}})


@dataclass(frozen=True, slots=True)
class ConnectionBounds:
    """How many client connections may be open, how soon a request head must arrive."""

    max_connections: int
    header_timeout: float


def _canned(status: int, message: str, extra: str = "") -> bytes:
    body = error_body(status, message)
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


_REFUSED = _canned(503, "the gateway is at its connection limit; retry shortly",
                   "Retry-After: 1\r\n")
_HEAD_TIMEOUT = _canned(408, "the request head did not arrive in time")


class _JsonErrorHandler(RequestHandler):
    _head_timer: asyncio.TimerHandle | None = None
    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        bounds: ConnectionBounds | None = getattr(server, "bounds", None)
        if server is None or bounds is None:
            return
        if server.open_connections >= bounds.max_connections:  # type: ignore[attr-defined]
            server.refused_connections += 1  # type: ignore[attr-defined]
            transport.write(_REFUSED)  # type: ignore[attr-defined]
            transport.close()
            return
        server.open_connections += 1  # type: ignore[attr-defined]
        self._counted = True
        self._head_timer = self._loop.call_later(bounds.header_timeout, self._head_overdue)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and (self._messages or self._current_request
                                             is not None or self._request_count):
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._messages or self._current_request is not None or self._request_count:
            return
        if self.transport is not None:
            log.debug("closing a connection whose request head did not arrive in time")
            self.transport.write(_HEAD_TIMEOUT)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._counted:
            self._counted = False
            self._manager.open_connections -= 1  # type: ignore[union-attr]
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # not the client's doing: aiohttp logs it with its traceback
            super().handle_error(request, status, exc, message)
            text = "internal error in the gateway"
        else:
            text = (message or HTTPStatus(status).phrase).splitlines()[0][:200]
            log.debug("bad request from %s: %d %s", request.remote, status, text)
            if request.writer.output_size > 0:
                raise ConnectionError("response already started; cannot send the error")
        resp = web.Response(status=status, body=error_body(status, text),
                            content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` whose protocol-level errors are OpenAI-style JSON and whose client
    connections are bounded by `bounds` (none without)."""

    def __init__(self, app: web.Application, *, bounds: ConnectionBounds | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.bounds = bounds

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object, JSON error pages
        server.bounds = self.bounds  # type: ignore[attr-defined]
        server.open_connections = 0  # type: ignore[attr-defined]
        server.refused_connections = 0  # type: ignore[attr-defined]
        return server


def raise_open_file_limit(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit);
    the soft limit in effect afterwards."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # not allowed here: keep what we have
            log.info("could not raise the open-file limit to %d: %s", target, exc)
    return soft
