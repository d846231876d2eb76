"""The inference request path: parse, schedule, forward, relay, account.

For each POST to an OpenAI route the proxy parses the body into a core `InferenceRequest`,
asks the core `Router` for a decision among the pool's *ready* endpoints, sends the original
bytes to the target over the data layer's pooled session, and relays the response chunk by
chunk as it arrives. An event stream is relayed in whole events: the incomplete last event of a
chunk waits for its end, so a client never sees half an event; nothing else is held. While
relaying it reads the
`usage` object (see `sse.py`) and, whatever happens, closes the books exactly once:
`Router.finish` (in-flight counts, plugin hooks) and the metrics.

Retries: a connect failure, or a 5xx status before any body byte, is retried once on the next
endpoint of the decision (the picker's fallback, else another ready endpoint). A read timeout
is not retried (the first server may still be working on it) and maps to 504; an exhausted
connect retry to 502. A model server failing mid-response ends an event stream with an error
event and `data: [DONE]` (the OpenAI SDK raises it as an APIError); a plain body is cut off. A
client that disconnects cancels the upstream request (its connection is closed, which vLLM takes
as an abort).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..core.endpoint import Endpoint
from ..core.errors import (InferouteError, ModelNotFound, PayloadTooLarge, UpstreamError,
                           UpstreamTimeout)
from ..core.request import API_PATHS, InferenceRequest, parse_request
from ..core.router import Decision
from ..datalayer.discovery.static import ServingConfig
from ..datalayer.runtime import DataLayer
from ..observability import Observability
from .sse import UsageTracker

log = logging.getLogger("inferoute.gateway")

SERVED_HEADER = "x-gateway-destination-endpoint-served"
#: RFC 9110 hop-by-hop fields plus ones the proxy recomputes
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
_DROP_REQUEST = _HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE = _HOP_BY_HOP
MAX_ATTEMPTS = 2


def error_response(exc: InferouteError) -> web.Response:
    """An OpenAI-style JSON error with the error's status and headers."""
    return web.Response(body=orjson.dumps(exc.to_dict()), status=exc.status,
                        content_type="application/json", headers=exc.headers or None)


def _connection_tokens(headers: Any) -> set[str]:
    """Header names listed in `Connection` (hop-by-hop by declaration)."""
    tokens: set[str] = set()
    for k, v in headers.items():
        if k.lower() == "connection":
            tokens.update(t.strip().lower() for t in v.split(","))
    return tokens


def forward_request_headers(headers: Any) -> dict[str, str]:
    """Client headers minus hop-by-hop ones and any client-set destination header."""
    drop = _DROP_REQUEST | _connection_tokens(headers)
    out: dict[str, str] = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in drop or lk.startswith("x-gateway-destination-endpoint"):
            continue
        out[k] = v
    return out


def forward_response_headers(headers: Any) -> list[tuple[str, str]]:
    drop = _DROP_RESPONSE | _connection_tokens(headers)
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


#: an event stream's incomplete tail is held back until its event ends, up to this size
MAX_HELD_EVENT = 1024 * 1024


def _split_events(data: bytes) -> tuple[bytes, bytes]:
    """(complete events to send now, incomplete tail to hold) of an SSE byte stream."""
    end = data.rfind(b"\n\n")
    end = end + 2 if end >= 0 else 0
    crlf = data.rfind(b"\r\n\r\n")
    if crlf >= 0 and crlf + 4 > end:
        end = crlf + 4
    if end == len(data) or len(data) - end > MAX_HELD_EVENT:
        return data, b""
    return data[:end], data[end:]


class Proxy:
    """Holds what every request needs; `handle` is the aiohttp handler of the POST routes."""

    def __init__(self, data: DataLayer, obs: Observability, config: ServingConfig) -> None:
        self.data = data
        self.obs = obs
        self.config = config
        up = config.upstream
        self.timeout = aiohttp.ClientTimeout(total=up.request_timeout,
                                             sock_connect=up.connect_timeout,
                                             sock_read=up.read_timeout)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit "
                                  f"is {limit}")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        data, obs = self.data, self.obs
        now = data.clock()
        api = API_PATHS[request.path]
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        model = target = ""
        try:
            raw = await self._read_body(request)
            headers = {k.lower(): v for k, v in request.headers.items()}
            ireq = parse_request(api, raw, headers, request_id=request_id, arrival_time=now)
            model = target = ireq.model
            mp = data.router.resolve(ireq)
            if ireq.target_model in mp.aliases:  # an alias names the pool's model upstream
                ireq.target_model = target = mp.model
            candidates = data.ready_endpoints(mp, now)
            t0 = time.perf_counter()
            decision = data.router.schedule(ireq, now, candidates)
            obs.scheduled(time.perf_counter() - t0,
                          ireq.attributes.get("prefix_cache_hit_ratio"))
        except InferouteError as exc:
            if isinstance(exc, ModelNotFound) or not model:
                model = target = "unknown"  # never a client-chosen label value
            obs.request_rejected(model, target, str(exc.status))
            return error_response(exc)
        obs.request_started(model, target, len(raw))
        return await self._forward(request, ireq, decision, raw, candidates)

    def _body_for(self, ireq: InferenceRequest, raw: bytes) -> bytes:
        if ireq.target_model == ireq.model:
            return raw
        body = dict(ireq.body)
        body["model"] = ireq.target_model
        return orjson.dumps(body)

    async def _forward(self, request: web.Request, ireq: InferenceRequest, decision: Decision,
                       raw: bytes, candidates: list[Endpoint]) -> web.StreamResponse:
        data, obs, router = self.data, self.obs, self.data.router
        pool = decision.pool.model
        order = list(decision.result.targets)
        order += [ep for ep in candidates if ep not in order]
        body = self._body_for(ireq, raw)
        headers = forward_request_headers(request.headers)
        url_path = request.rel_url.raw_path_qs
        session = data.session
        assert session is not None, "DataLayer.start() was not awaited"
        usage: dict[str, Any] | None = None
        ttft: float | None = None
        nbytes = 0
        error_code: str | None = None
        current: Endpoint | None = None
        upstream: aiohttp.ClientResponse | None = None
        try:
            for attempt, ep in enumerate(order[:MAX_ATTEMPTS]):
                last = attempt == min(len(order), MAX_ATTEMPTS) - 1
                if current is not None:
                    obs.released(pool, current.name)
                    obs.retried(pool)
                router.dispatch(decision, ep, data.clock())
                obs.dispatched(pool, ep.name)
                current = ep
                try:
                    upstream = await session.request("POST", ep.url + url_path, data=body,
                                                     headers=headers, timeout=self.timeout)
                except asyncio.TimeoutError as exc:
                    if isinstance(exc, aiohttp.ConnectionTimeoutError) and not last:
                        log.warning("connect to %s timed out; retrying elsewhere", ep.name)
                        continue
                    raise UpstreamTimeout(f"model server {ep.name} did not answer in time") \
                        from None
                except (aiohttp.ClientConnectionError, OSError) as exc:
                    if not last:
                        log.warning("request to %s failed (%s); retrying elsewhere", ep.name,
                                    exc)
                        continue
                    raise UpstreamError(f"model server {ep.name} is unreachable: "
                                        f"{type(exc).__name__}") from None
                if upstream.status >= 500 and not last:
                    log.warning("%s answered %d; retrying elsewhere", ep.name, upstream.status)
                    upstream.release()
                    upstream = None
                    continue
                break
            if upstream is None or current is None:  # pragma: no cover - loop always sets them
                raise UpstreamError("no endpoint could be tried")
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=forward_response_headers(upstream.headers))
            resp.headers[SERVED_HEADER] = current.name
            await resp.prepare(request)
            stream = "text/event-stream" in upstream.headers.get("content-type", "")
            tracker = UsageTracker(stream) if "content-encoding" not in upstream.headers \
                else None
            held = b""  # an event stream is relayed whole events at a time
            try:
                async for chunk in upstream.content.iter_any():
                    if ttft is None:
                        ttft = data.clock() - ireq.arrival_time
                    nbytes += len(chunk)
                    if tracker is not None:
                        tracker.feed(chunk)
                    if stream:
                        chunk, held = _split_events(held + chunk if held else chunk)
                        if not chunk:
                            continue
                    await resp.write(chunk)
                if held:
                    await resp.write(held)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    asyncio.TimeoutError) as exc:
                if isinstance(exc, ConnectionResetError):
                    raise  # the client went away: handled below
                timeout = isinstance(exc, asyncio.TimeoutError)
                error_code = "504" if timeout else "502"
                log.warning("upstream %s failed mid-response: %s", current.name,
                            type(exc).__name__)
                upstream.close()
                if stream:
                    # drop the half event, end the stream cleanly: an error event, [DONE]
                    err = (UpstreamTimeout if timeout else UpstreamError)(
                        f"model server {current.name} failed mid-stream")
                    await resp.write(b"data: " + orjson.dumps(err.to_dict())
                                     + b"\n\ndata: [DONE]\n\n")
                    await resp.write_eof()
                elif request.transport is not None:
                    # headers are out: cut the connection so the client sees a truncated body
                    request.transport.close()
                return resp
            if tracker is not None:
                usage = tracker.finish()
            if upstream.status >= 400:
                error_code = str(upstream.status)
            await resp.write_eof()
            upstream.release()
            return resp
        except InferouteError as exc:
            error_code = str(exc.status)
            return error_response(exc)
        except (ConnectionResetError, asyncio.CancelledError):
            error_code = "client_disconnect"
            raise
        finally:
            if upstream is not None and not upstream.closed and error_code is not None:
                upstream.close()  # abort: the model server sees the disconnect and stops
            router.finish(decision, data.clock(), usage)
            if current is not None:
                obs.released(pool, current.name)
            obs.request_finished(ireq.model, ireq.target_model,
                                 latency=data.clock() - ireq.arrival_time, ttft=ttft,
                                 usage=usage, response_bytes=nbytes, error_code=error_code)
