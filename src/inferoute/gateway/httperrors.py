"""OpenAI-style JSON for the errors aiohttp answers itself, before any route runs.

A request line or header aiohttp's parser rejects (a control character in a header, a header
over the size limit, a bad Content-Length or chunk size) never reaches the application's
middleware: aiohttp answers it with a text/plain page and logs the parser's traceback at ERROR.
A client could fill the log that way, and the OpenAI clients expect a JSON error. `GatewayRunner`
is an `AppRunner` whose connections answer such errors with the usual JSON envelope and log a
client's mistake as one debug line (a 5xx here is a bug and keeps its logged traceback).
"""

from __future__ import annotations

import logging
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


class _JsonErrorHandler(RequestHandler):
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
    """`web.AppRunner` whose protocol-level errors are OpenAI-style JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same object, JSON error pages
        return server
