"""The HTTP gateway's request path: an I/O loop around the core's `RequestLifecycle`.

For each POST to an OpenAI route the proxy reads the body (bounded, decoded, within
`bodyTimeout`) and feeds it to a `RequestLifecycle` (`core/lifecycle.py`), which parses it,
applies model routes, resolves the pool, rewrites aliases, prepares the upstream body, admits,
selects the candidates and schedules. Between `parse` and `route` the proxy does what is I/O by
nature: the tenant key look-up and limits (its objective and fairness id go to `route`) and
semantic routing (an "auto" pick sets the target model; a semantic-cache hit is answered at
once). A `Wait` action waits on the shared admission driver's ticket. The proxy then carries out
`SendUpstream` over a kept-alive connection (`upstream.py`), reports what happens (connect
failure or timeout, the status line with Retry-After and first bytes, a failure before anything
reached the client) and carries out the next action: a retry elsewhere after the back-off it
names, an error, or relaying the answer. Which endpoint comes next, what a 429/503 (back-pressure:
skipped for its Retry-After), a 5xx or a 404 for the pool's own model (a replica serving another
model: taken out until its `/v1/models` lists the model, see `datalayer/endpoint_health.py`)
mean, the request's deadline (`requestTimeout`) and the all-stale fallback are the core's
(`core/retryplan.py`, `core/selection.py`); `inferoute_stale_metrics_fallback_total{pool}` counts that fallback here.

The answer is relayed chunk by chunk as it arrives; an event stream in whole events (the
incomplete last event of a chunk waits for its end, so a client never sees half an event), with
the lifecycle's relay (the client's model name written back after a route or alias, the usage
chunk hidden when the gateway asked for it); usage is read on the way (`core/relay.py`). The
client's response starts with its first byte, so until then a failure is retried elsewhere
(the abandoned attempt's connection is closed, which vLLM takes as an abort). The last attempt's
timeout maps to 504, its connect failure to 502, its status is relayed. After the first byte, a
gap longer than `idleTimeout` or a model server failing mid-response ends an event stream with
an error event and `data: [DONE]` (the OpenAI SDK raises it as an APIError); a plain body is cut
off. A client that disconnects cancels the upstream request the same way. Whatever happens the
lifecycle closes the books exactly once (`Router.finish`, health outcome); the proxy adds
metrics and tenant usage. The decision's own bookkeeping (the scheduler's `on_scheduled` hooks,
the scheduling metrics) runs in the loop iteration after the upstream send.

Limits: at most `maxConcurrentRequests` API requests are in progress (queued and streaming ones
included); one more gets an immediate 503 with `Retry-After`, never a wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import compression_utils, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..core.admission.flowcontrol import Ticket
from ..core.endpoint import Endpoint
from ..core.errors import (InferouteError, ModelNotFound, NoEndpointAvailable,
                           PayloadTooLarge, UpstreamError, UpstreamTimeout)
from ..core.lifecycle import Action, Finish, Relay, RequestLifecycle, Respond, SendUpstream, Wait
from ..core.request import API_PATHS
from ..core.retryplan import RetryPolicy
from ..core.router import Decision
from ..core.selection import CandidateSelector
from ..datalayer.admission_driver import AdmissionDriver
from ..datalayer.serving_config import ServingConfig
from ..datalayer.runtime import DataLayer
from ..datalayer.stale_fallback import StaleFallbackReport
from ..observability import Observability
from ..datalayer.endpoint_health import EndpointHealth
from .httperrors import BodyTimeout, UnreadableBody, UnsupportedMediaType, error_body
from .semantic import Semantic
from .tenants import Tenants
from .upstream import ConnectTimeout, UpstreamConnectionError, UpstreamPool, UpstreamResponse

log = logging.getLogger("inferoute.gateway")

SERVED_HEADER = "x-gateway-destination-endpoint-served"
#: RFC 9110 hop-by-hop fields plus ones the proxy recomputes
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
#: the body is forwarded as read, decoded: its client-side Content-Encoding must not go along
_DROP_REQUEST = _HOP_BY_HOP | {"host", "content-length", "content-encoding"}
#: request Content-Encodings the server decodes (aiohttp), the others get 415
_DECODED = frozenset({"", "identity", "gzip", "deflate"} |
                     ({"br"} if compression_utils.HAS_BROTLI else set()) |
                     ({"zstd"} if getattr(compression_utils, "HAS_ZSTD", False) else set()))
_DROP_RESPONSE = _HOP_BY_HOP
#: how much of a model server's non-JSON error body is quoted in the gateway's error
WRAPPED_ERROR_BYTES = 512


def error_response(exc: InferouteError) -> web.Response:
    """An OpenAI-style JSON error with the error's status and headers."""
    resp = web.Response(body=orjson.dumps(exc.to_dict()), status=exc.status,
                        content_type="application/json", headers=exc.headers or None)
    if getattr(exc, "close_connection", False):
        resp.force_close()
    return resp


def _forwarded(headers: Any, drop: frozenset[str]) -> list[tuple[str, str, str]]:
    """(name, lowercase name, value) of the headers not in `drop` nor named by `Connection`
    (hop-by-hop by declaration); one pass, as this runs twice for every request."""
    kept: list[tuple[str, str, str]] = []
    named: list[str] = []
    for k, v in headers.items():
        lk = k.lower()
        if lk in drop:
            if lk == "connection":
                named.append(v)
            continue
        kept.append((k, lk, v))
    if named:
        tokens = {t.strip().lower() for v in named for t in v.split(",")}
        kept = [h for h in kept if h[1] not in tokens]
    return kept


def forward_request_headers(headers: Any) -> dict[str, str]:
    """Client headers minus hop-by-hop ones and any client-set destination header."""
    return {k: v for k, lk, v in _forwarded(headers, _DROP_REQUEST)
            if not lk.startswith("x-gateway-destination-endpoint")}


def forward_response_headers(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in _forwarded(headers, _DROP_RESPONSE)]


class Proxy:
    """Holds what every request needs; `handle` is the aiohttp handler of the POST routes."""

    def __init__(self, data: DataLayer, obs: Observability, config: ServingConfig,
                 admission: AdmissionDriver | None = None, health: EndpointHealth | None = None,
                 tenants: Tenants | None = None, semantic: Semantic | None = None) -> None:
        self.data = data
        self.obs = obs
        self.config = config
        self.admission = admission
        self.health = health
        self.tenants = tenants
        self.semantic = semantic
        # first-byte and idle timeouts are applied around the reads in _connect and _relay
        self.upstream = UpstreamPool(connect_timeout=config.upstream.connect_timeout)
        #: API requests in progress, for `maxConcurrentRequests`
        self.active = 0
        self.selector = CandidateSelector(data.router, health, stale_fallback=data.scrape,
                                          on_stale=StaleFallbackReport(obs.registry, "gateway"))
        up = config.upstream
        self.retry = RetryPolicy(backoff=up.retry_backoff, backoff_max=up.retry_backoff_max,
                                 request_timeout=up.request_timeout)
        #: the retries' back-off jitter
        self.rng = random.Random()

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit "
                                  f"is {limit}")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _DECODED:
            raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not supported; "
                                       f"use one of {', '.join(sorted(_DECODED - {''}))}",
                                       code="unsupported_content_encoding")
        try:
            async with asyncio.timeout(self.config.connections.body_timeout):
                return await request.read()
        except TimeoutError:  # a slow or stalled body holds a connection: not for ever
            request.content.feed_eof()
            raise BodyTimeout(f"the request body did not arrive within "
                              f"{self.config.connections.body_timeout:g}s") from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from None
        except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. gzip that is not
            cause = exc.__cause__ or exc.__context__ or exc
            request.content.feed_eof()  # aiohttp would otherwise drain it and log the error
            raise UnreadableBody(f"the request body could not be read ({encoding or 'identity'}): "
                             f"{str(cause).strip()[:200] or type(cause).__name__}",
                             code="invalid_body_encoding") from None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The POST handler: `_handle` within the `maxConcurrentRequests` limit."""
        if self.active >= self.config.max_concurrent_requests:
            self.obs.over_concurrency_limit()
            return error_response(NoEndpointAvailable(
                f"the gateway is at its limit of {self.config.max_concurrent_requests} "
                "requests in progress; retry shortly", code="gateway_overloaded",
                headers={"Retry-After": "1"}))
        self.active += 1
        try:
            return await self._handle(request)
        finally:
            self.active -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        data, obs = self.data, self.obs
        now = data.clock()
        api = API_PATHS[request.path]
        # a random id without a system call per request (uuid4 reads os.urandom)
        request_id = request.headers.get("x-request-id") or f"{random.getrandbits(128):032x}"
        lc = self._lifecycle()
        model = target = ""
        tenant = None
        flight = _Flight(arrival=now)
        try:
            raw = await self._read_body(request)
            headers = {k.lower(): v for k, v in request.headers.items()}
            if refused := lc.parse(api, raw, headers, request_id=request_id, now=now):
                _check(refused)  # raises its error
            ireq = lc.request
            assert ireq is not None
            model = target = ireq.model
            if self.tenants is not None:  # 401 / 403 / 429 before anything else
                tenant = await self.tenants.admit(ireq, now, self._context_length(model))
            if self.semantic is not None:  # "auto" models, guards, semantic cache
                cached, flight.headers = self.semantic.route(
                    ireq, tenant.tenant.name if tenant else None, now)
                if cached is not None:  # answered from the semantic cache
                    obs.request_started(model, model, len(raw))
                    obs.request_finished(model, model, latency=data.clock() - now,
                                         response_bytes=cached.content_length or 0)
                    return cached
            actions = lc.route(now, tenant_objective=tenant.tenant.objective if tenant else None,
                               tenant_fairness_id=tenant.tenant.fairness_id if tenant else None)
            target = ireq.target_model
            if isinstance(actions[0], Wait):  # queued by admission
                actions = await self._wait(lc, actions[0].ticket)
            send = _check(actions)
        except InferouteError as exc:
            if isinstance(exc, ModelNotFound) or not model:
                model = target = "unknown"  # never a client-chosen label value
            obs.request_rejected(model, target, str(exc.status))
            if tenant is not None and self.tenants is not None:  # refund the token estimate
                await self.tenants.settle(tenant, {"total_tokens": 0}, data.clock())
            return error_response(exc)
        # the index updates and these metrics run once the request is on its way (the next
        # loop iteration: see Scheduler.schedule), off the request's latency
        assert lc.decision is not None  # a send follows a decision
        asyncio.get_running_loop().call_soon(
            self._books_after_send, lc.decision, lc.schedule_seconds, model, target, len(raw))
        try:
            return await self._forward(request, lc, send, flight)
        finally:
            if self.admission is not None:
                self.admission.pump()  # capacity freed: release waiting requests
            if tenant is not None and self.tenants is not None:
                up = flight.upstream  # set once a response was relayed
                await self.tenants.settle(tenant, flight.usage, data.clock(),
                                          rejected=up is None or up.status >= 400)
            if self.semantic is not None and flight.reply is not None:
                self.semantic.store(ireq, tenant.tenant.name if tenant else None, flight.reply)

    def _lifecycle(self) -> RequestLifecycle:
        adm = self.admission
        return RequestLifecycle(
            self.data.router, selector=self.selector,
            admission=adm.controller if adm is not None else None,
            rules=adm.rules if adm is not None else None, retry=self.retry, rng=self.rng,
            defer_hooks=True, inject_usage=adm is not None or self.tenants is not None,
            timer=time.perf_counter)

    async def _wait(self, lc: RequestLifecycle, ticket: Ticket) -> list[Action]:
        """Wait in the admission queue (a client that leaves is taken out of it)."""
        assert self.admission is not None
        try:
            await self.admission.wait(ticket)
        except InferouteError as exc:
            return lc.expired(exc)
        return lc.released(self.data.clock())

    def _context_length(self, model: str) -> int | None:
        """The context length the endpoints of `model`'s pool reported, if any."""
        mp = self.data.router.pool_of(model)
        if self.health is None or mp is None:
            return None
        return self.health.context_lengths.get(mp.model)

    def _books_after_send(self, decision: Decision, took: float, model: str, target: str,
                          body_bytes: int) -> None:
        decision.pool.scheduler.run_deferred_hooks()
        self.obs.scheduled(took, decision.request.prefix_cache_hit_ratio)
        self.obs.request_started(model, target, body_bytes)

    def close(self) -> None:
        """Close the idle upstream connections (at shutdown)."""
        self.upstream.close()

    async def _forward(self, request: web.Request, lc: RequestLifecycle, send: SendUpstream,
                       flight: _Flight) -> web.StreamResponse:
        """Send, relay, and account exactly once whatever happens."""
        data, obs = self.data, self.obs
        ireq, decision = lc.request, lc.decision
        assert ireq is not None and decision is not None
        try:
            headers = forward_request_headers(request.headers)
            if self.tenants is not None:  # the caller's gateway key stays here
                headers = {k: v for k, v in headers.items()
                           if k.lower() not in ("authorization", "x-api-key")}
            while True:
                await self._connect(flight, lc, send, headers, request.rel_url.raw_path_qs)
                try:
                    return await self._relay(flight, request, lc)
                except _NothingRelayed as exc:  # failed before a byte reached the client
                    send = _check(lc.upstream_failed(data.clock(), exc.error, relayed=False))
                    log.warning("%s; retrying elsewhere (nothing was relayed yet)", exc.error)
        except InferouteError as exc:
            flight.error_code = str(exc.status)
            return error_response(exc)
        except asyncio.CancelledError:  # the client hung up (handler cancellation)
            flight.error_code = "client_disconnect"
            raise
        except ConnectionResetError:  # ... noticed while writing to it: nothing to log
            flight.error_code = "client_disconnect"
            return web.Response(status=499)
        finally:
            up = flight.upstream
            if up is not None and not up.closed and flight.error_code is not None:
                up.close()  # abort: the model server sees the disconnect and stops
            lc.close(data.clock())  # unless the relay ended it
            if flight.endpoint is not None:
                obs.released(decision.pool.model, flight.endpoint.name)
            obs.request_finished(ireq.model, ireq.target_model,
                                 latency=data.clock() - ireq.arrival_time, ttft=flight.ttft,
                                 usage=flight.usage, response_bytes=flight.nbytes,
                                 error_code=flight.error_code)

    async def _connect(self, flight: _Flight, lc: RequestLifecycle, send: SendUpstream,
                       headers: dict[str, str], url_path: str) -> None:
        """Carry out `send` and the retries the lifecycle asks for until it accepts an answer
        (its headers and first body chunk: `flight.endpoint`, `flight.upstream`,
        `flight.first`); raises the error it responds with."""
        assert lc.pool is not None and lc.deadline is not None
        clock, obs, pool = self.data.clock, self.obs, lc.pool.model
        up = self.config.upstream
        while True:
            ep = send.endpoint
            if flight.endpoint is not None:
                obs.released(pool, flight.endpoint.name)
                obs.retried(pool)
                await asyncio.sleep(send.delay)
            obs.dispatched(pool, ep.name)
            flight.endpoint = ep
            upstream: UpstreamResponse | None = None
            first_byte = asyncio.timeout(min(up.first_byte_timeout,
                                             max(0.001, lc.deadline - clock())))
            try:
                async with first_byte:
                    upstream = await self.upstream.post(
                        ep.host.strip("[]"), ep.port, url_path, headers, lc.body,
                        tls=ep.scheme == "https", total_timeout=up.request_timeout)
                    if lc.needs_head(upstream.status):
                        flight.first = await upstream.readany()
            except TimeoutError as exc:
                if upstream is not None:
                    upstream.close()  # abandoned: the model server sees the disconnect
                send = _check(lc.upstream_failed(
                    clock(), UpstreamTimeout(f"model server {ep.name} did not answer in time"),
                    retry=first_byte.expired() or isinstance(exc, ConnectTimeout)))
                log.warning("%s timed out before the first byte; retrying elsewhere", ep.name)
                continue
            except OSError as exc:  # refused, unreachable, reset, closed, bad HTTP
                if upstream is not None:
                    upstream.close()
                send = _check(lc.upstream_failed(
                    clock(), UpstreamError(f"model server {ep.name} is unreachable: "
                                           f"{type(exc).__name__}")))
                log.warning("request to %s failed (%s); retrying elsewhere", ep.name, exc)
                continue
            status = upstream.status
            actions = lc.upstream_answered(clock(), status, head=flight.first,
                                           retry_after=upstream.headers.get("retry-after"))
            if not actions:  # the client's answer
                if flight.first:
                    flight.ttft = clock() - flight.arrival
                flight.upstream = upstream
                return
            if status == 404:  # for the pool's own model: the replica serves another
                upstream.close()
            else:
                upstream.release()
            send = _check(actions)
            log.warning("%s answered %d%s; retrying elsewhere", ep.name, status,
                        " for the pool's model" if status == 404 else "")

    async def _relay(self, flight: _Flight, request: web.Request,
                     lc: RequestLifecycle) -> web.StreamResponse:
        """Stream the upstream response to the client: each chunk goes to the lifecycle, what
        it relays goes to the client."""
        upstream, ep, ireq = flight.upstream, flight.endpoint, lc.request
        assert upstream is not None and ep is not None and ireq is not None
        if upstream.status >= 400 and not _json_typed(upstream.headers):
            return await self._wrapped_error(flight, upstream, ep, lc)
        clock = self.data.clock
        stream = "text/event-stream" in upstream.headers.get("content-type", "")
        plain = "content-encoding" not in upstream.headers
        collector = None
        if self.semantic is not None and plain and upstream.status == 200 and stream:
            collector = self.semantic.collector(ireq)
        lc.first_byte(clock(), stream=stream, plain=plain,
                      keep_document=self.semantic is not None and upstream.status == 200)
        out_headers = forward_response_headers(upstream.headers)
        if plain and lc.rename is not None:  # the body may change length
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
        resp = _RelayResponse(status=upstream.status, reason=upstream.reason,
                              headers=out_headers)
        resp.headers[SERVED_HEADER] = ep.name
        resp.headers.update(flight.headers)
        # prepared at the first byte for the client: until then a failure is retried elsewhere
        read = upstream.readany
        watch = _IdleWatch(self.config.upstream.idle_timeout, upstream.close)
        chunk, flight.first = flight.first, b""
        sink: _ClientSink | None = None
        try:
            while chunk:
                if flight.ttft is None:
                    flight.ttft = clock() - ireq.arrival_time
                flight.nbytes += len(chunk)
                if collector is not None:
                    collector.feed(chunk)
                out = _relayed(lc.body_chunk(chunk))
                if out:
                    if not resp.prepared:
                        await resp.prepare(request)
                    await resp.write(out)  # the headers leave with the first write
                    if sink is None and stream and _chunked(resp):
                        sink = _ClientSink.of(request, lc, flight, collector, watch)
                upstream.sink = sink  # the chunks that follow, while the client keeps up
                watch.reading = True  # only waits for upstream count: a slow client is fine
                chunk = await read()
                watch.reading = False
                upstream.sink = None
            if watch.fired:  # closed by the watch: the read may have ended "normally"
                raise TimeoutError
            ended = lc.end(clock())
            out = _relayed(ended)
            if not resp.prepared:
                await resp.prepare(request)
            if out:
                await resp.write(out)
        except (TimeoutError, UpstreamConnectionError, aiohttp.ClientConnectionError) as exc:
            if isinstance(exc, ConnectionResetError):
                # the client went away while we wrote to it: not an error of ours (raising
                # would make aiohttp log a traceback); the finally in _forward aborts upstream
                flight.error_code = "client_disconnect"
                return resp
            timeout = watch.fired or isinstance(exc, TimeoutError)
            flight.error_code = "504" if timeout else "502"
            upstream.close()
            failure = (UpstreamTimeout if timeout else UpstreamError)(
                f"model server {ep.name} failed mid-stream ({type(exc).__name__})")
            if not resp.prepared:  # nothing reached the client: another endpoint may serve it
                flight.upstream, flight.error_code, flight.ttft = None, None, None
                raise _NothingRelayed(failure)
            log.warning("upstream %s failed mid-response: %s", ep.name, type(exc).__name__)
            ending = _relayed(lc.upstream_failed(clock(), failure))
            if ending:  # an event stream: error event, [DONE], clean end
                await resp.write(ending)
                await resp.write_eof()
            elif request.transport is not None:
                # headers are out: cut the connection so the client sees a truncated body
                request.transport.close()
            return resp
        finally:
            watch.cancel()
            upstream.sink = None  # however the relay ended, no chunk goes to the client now
        flight.usage = next(a.usage for a in ended if isinstance(a, Finish))
        if collector is not None:
            flight.reply = collector.reply()
        elif lc.document:
            flight.reply = lc.document
        if upstream.status >= 400:
            flight.error_code = str(upstream.status)
        await resp.write_eof()
        upstream.release()
        return resp

    async def _wrapped_error(self, flight: _Flight, upstream: UpstreamResponse,
                             ep: Endpoint, lc: RequestLifecycle) -> web.Response:
        """A model server's error that is not JSON (`404: Not Found` from a server without
        the route) as an OpenAI-style error that says which replica answered what."""
        text, chunk = b"", flight.first
        try:
            async with asyncio.timeout(self.config.upstream.idle_timeout):
                while chunk and len(text) < WRAPPED_ERROR_BYTES:
                    text += chunk
                    chunk = await upstream.readany()
        except (TimeoutError, UpstreamConnectionError):
            pass
        upstream.close()
        flight.first = b""
        flight.error_code = str(upstream.status)
        lc.end(self.data.clock(), record=False)  # not an outcome for health
        said = text[:WRAPPED_ERROR_BYTES].decode("utf-8", "replace").strip() or "(no body)"
        resp = web.Response(body=error_body(upstream.status, f"model server {ep.name} answered "
                                            f"{upstream.status}: {said}"),
                            status=upstream.status, content_type="application/json")
        resp.headers[SERVED_HEADER] = ep.name
        return resp


def _json_typed(headers: Any) -> bool:
    ctype = headers.get("content-type", "").lower()
    return "json" in ctype or "text/event-stream" in ctype


def _chunked(resp: web.StreamResponse) -> bool:
    """Whether a prepared response's body goes out in HTTP/1.1 chunks (aiohttp chooses them
    for a body of unknown length; `resp.chunked` says only whether the handler asked)."""
    return resp.headers.get("Transfer-Encoding", "").lower() == "chunked"


def _relayed(actions: list[Action]) -> bytes:
    """The bytes the lifecycle relays to the client among `actions`."""
    if len(actions) == 1:  # the per-chunk case
        return actions[0].data if isinstance(actions[0], Relay) else b""
    return b"".join(a.data for a in actions if isinstance(a, Relay))


def _check(actions: list[Action]) -> SendUpstream:
    """The send the lifecycle asks for; raises the error it responds with instead."""
    first = actions[0]
    if isinstance(first, Respond):
        raise first.error
    assert isinstance(first, SendUpstream)
    return first


class _NothingRelayed(Exception):
    """The upstream failed before any byte of its response reached the client."""

    def __init__(self, error: InferouteError) -> None:
        super().__init__(error.message)
        self.error = error


class _RelayResponse(web.StreamResponse):
    """A StreamResponse whose headers leave with its first body write, in one send.

    aiohttp sends a StreamResponse's headers as soon as it is prepared; the relay always has
    a first chunk in hand by then, so holding them saves a send per response (aiohttp's
    buffered `Response` does the same). Loopback sends are what the gateway spends most of its
    per-request CPU on (`inferoute overhead`). `_send_headers_immediately` is aiohttp's own
    switch for this (3.10+); on a version without it, this is a plain StreamResponse.
    """

    _send_headers_immediately = False


class _ClientSink:
    """Relays an event stream's chunks to the client from the upstream connection's callback.

    The relay's loop pays, per chunk, a task switch (a future resolved, the task woken) and
    aiohttp's write coroutines; a token stream is one chunk per token, and the gateway's CPU
    per relayed token is what it costs beside a compiled router (issue 17, item 6). While the
    client keeps up, this writes each chunk's relayed bytes straight to the client's
    transport as one HTTP/1.1 chunk, as aiohttp would (chunked responses only), and counts them
    in the response's writer (`output_size`: the access log's size). It declines the chunk,
    and with it every chunk until the loop installs it again, while the client's transport
    holds unsent bytes or is closing: the loop then writes through aiohttp, whose drain waits
    for a slow client, and notices a client that went away.
    """

    __slots__ = ("_collector", "_flight", "_lc", "_transport", "_watch", "_writer")

    def __init__(self, transport: asyncio.Transport, writer: AbstractStreamWriter,
                 lc: RequestLifecycle, flight: _Flight, collector: Any,
                 watch: _IdleWatch) -> None:
        self._transport = transport
        self._writer = writer
        self._lc = lc
        self._flight = flight
        self._collector = collector
        self._watch = watch

    @classmethod
    def of(cls, request: web.Request, lc: RequestLifecycle, flight: _Flight, collector: Any,
           watch: _IdleWatch) -> _ClientSink | None:
        """The sink for a prepared, chunked response whose headers have left (None without a
        transport: the client is gone)."""
        transport = request.transport
        if transport is None:
            return None
        return cls(transport, request.writer, lc, flight, collector, watch)

    def __call__(self, data: bytes) -> bool:
        transport = self._transport
        if transport.get_write_buffer_size() or transport.is_closing():
            return False
        self._flight.nbytes += len(data)
        if self._collector is not None:
            self._collector.feed(data)
        out = _relayed(self._lc.body_chunk(data))
        if out:
            framed = b"%x\r\n%b\r\n" % (len(out), out)
            self._writer.output_size += len(framed)
            transport.write(framed)
        self._watch.reading = True  # the read goes on: its idle time starts again
        return True


class _IdleWatch:
    """Calls `on_idle` once a read of the upstream has waited `idle` seconds.

    One timer per response, re-armed only when it fires early, instead of a timeout around
    every chunk read (which costs a timer per chunk). Time spent writing to the client does
    not count: the relay sets `reading` around its reads only.
    """

    __slots__ = ("_handle", "_idle", "_loop", "_on_idle", "_since", "fired")

    def __init__(self, idle: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._on_idle = on_idle
        self._since: float | None = None  # when the current read started
        self.fired = False
        self._handle = self._loop.call_later(idle, self._check)

    @property
    def reading(self) -> bool:
        return self._since is not None

    @reading.setter
    def reading(self, value: bool) -> None:
        self._since = self._loop.time() if value else None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now - since >= self._idle:
            self.fired = True
            self._on_idle()
        else:  # not reading, or reading for less than `idle`: look again when it could be due
            self._handle = self._loop.call_at((since if since is not None else now)
                                              + self._idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


@dataclass(slots=True)
class _Flight:
    """What one proxied request has done so far, for the accounting in `_forward`."""

    endpoint: Endpoint | None = None
    upstream: UpstreamResponse | None = None
    #: the first body chunk, read before the client's response starts (b"": empty body)
    first: bytes = b""
    #: when the request arrived (`clock()` time), for the time to first byte
    arrival: float = 0.0
    usage: dict[str, Any] | None = None
    ttft: float | None = None
    nbytes: int = 0
    error_code: str | None = None
    #: extra response headers (semantic routing)
    headers: dict[str, str] = field(default_factory=dict)
    #: a finished 2xx reply to offer to the semantic cache
    reply: Any = None
