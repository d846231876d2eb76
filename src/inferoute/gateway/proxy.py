"""The inference request path: parse, admit, schedule, forward, relay, account.

For each POST to an OpenAI route the proxy parses the body into a core `InferenceRequest`;
runs the optional stages (tenant keys and limits, semantic routing, model routes, admission
control); asks the core `Router` for a decision among the pool's *ready* endpoints; sends the
body to the target over a kept-alive connection (`upstream.py`); and relays the response
chunk by chunk as it arrives. An event stream is relayed in whole events (the incomplete last
event of a chunk waits for its end, so a client never sees half an event); nothing else is
held. While relaying it reads the `usage` object (see `sse.py`) and, whatever happens, closes
the books exactly once: `Router.finish` (in-flight counts, plugin hooks), health outcome,
metrics, tenant usage. The decision's own bookkeeping (the scheduler's `on_scheduled` hooks,
the scheduling metrics) runs in the loop iteration after the upstream send.

Retries: a connect failure, a 5xx status, or no first body byte within `firstByteTimeout` is
retried on the next endpoint of the decision (the picker's fallback, else another ready
endpoint; endpoints on a failure streak last), at most `MAX_ATTEMPTS` attempts in all, after a
short jittered backoff (`retry_delay`; never before the first attempt). The first body chunk is
read before the client's response starts, so until then nothing is lost by a retry (the
abandoned attempt's connection is closed, which vLLM takes as an abort). The last attempt's
timeout maps to 504, its connect failure to 502. After the first byte, a gap longer than
`idleTimeout` or a model server failing mid-response ends an event stream with an error event
and `data: [DONE]` (the OpenAI SDK raises it as an APIError); a plain body is cut off. A client
that disconnects cancels the upstream request the same way.

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
from aiohttp import web

from ..core.admission.usage import ResponseRewriter, prepare_upstream_body
from ..core.endpoint import Endpoint
from ..core.errors import (InferouteError, ModelNotFound, NoEndpointAvailable,
                           PayloadTooLarge, UpstreamError, UpstreamTimeout)
from ..core.request import API_PATHS, InferenceRequest, parse_request
from ..core.router import Decision
from ..datalayer.admission_driver import AdmissionDriver
from ..datalayer.serving_config import ServingConfig
from ..datalayer.runtime import DataLayer
from ..observability import Observability
from .health import EndpointHealth
from .semantic import Semantic
from ..core.sse import UsageTracker
from .sse import ResponseRelay
from .tenants import Tenants
from .upstream import ConnectTimeout, UpstreamConnectionError, UpstreamPool, UpstreamResponse

log = logging.getLogger("inferoute.gateway")

SERVED_HEADER = "x-gateway-destination-endpoint-served"
#: RFC 9110 hop-by-hop fields plus ones the proxy recomputes
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
_DROP_REQUEST = _HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE = _HOP_BY_HOP
#: attempts per request before its first byte (the first pick plus two retries, each on
#: another endpoint): one healthy endpoint among three is always reached
MAX_ATTEMPTS = 3


def retry_delay(attempt: int, base: float, cap: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before attempt number `attempt` (0 = the first, never delayed).

    Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))).
    The jitter keeps many requests that failed together (a replica dying) from retrying in
    lockstep; the cap bounds what a client can be kept waiting by retries.
    """
    if attempt <= 0 or base <= 0:
        return 0.0
    return rand() * min(cap, base * 2 ** (attempt - 1))


def error_response(exc: InferouteError) -> web.Response:
    """An OpenAI-style JSON error with the error's status and headers."""
    return web.Response(body=orjson.dumps(exc.to_dict()), status=exc.status,
                        content_type="application/json", headers=exc.headers or None)


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
        model = target = ""
        tenant = None
        flight = _Flight(arrival=now)
        try:
            raw = await self._read_body(request)
            headers = {k.lower(): v for k, v in request.headers.items()}
            ireq = parse_request(api, raw, headers, request_id=request_id, arrival_time=now)
            original_body = ireq.body
            model = target = ireq.model
            if self.tenants is not None:  # 401 / 403 / 429 before anything else
                tenant = await self.tenants.admit(ireq, now)
            semantic_pick = False
            if self.semantic is not None:  # "auto" models, guards, semantic cache
                cached, flight.headers = self.semantic.route(
                    ireq, tenant.tenant.name if tenant else None, now)
                if cached is not None:  # answered from the semantic cache
                    obs.request_started(model, model, len(raw))
                    obs.request_finished(model, model, latency=data.clock() - now,
                                         response_bytes=len(cached.body or b""))
                    return cached
                semantic_pick = ireq.target_model != ireq.model
            adm = self.admission
            if adm is not None and not semantic_pick:
                adm.rules.route(ireq)  # a model route may pick another target model
            mp = data.router.resolve(ireq)
            if ireq.target_model in mp.aliases:  # an alias names the pool's model upstream
                ireq.target_model = mp.model
            target = ireq.target_model
            if target != model and not semantic_pick:
                flight.rename = (target, model)  # the client sees its own name back
            if adm is not None:  # may wait in the flow-control queue
                await adm.admit(ireq, mp, now,
                                tenant_objective=tenant.tenant.objective if tenant else None,
                                tenant_fairness_id=tenant.tenant.fairness_id if tenant else None)
            now = data.clock()
            candidates = data.ready_endpoints(mp, now)
            t0 = time.perf_counter()
            decision = data.router.schedule(ireq, now, candidates, defer_hooks=True)
            took = time.perf_counter() - t0
        except InferouteError as exc:
            if isinstance(exc, ModelNotFound) or not model:
                model = target = "unknown"  # never a client-chosen label value
            obs.request_rejected(model, target, str(exc.status))
            if tenant is not None and self.tenants is not None:  # refund the token estimate
                await self.tenants.settle(tenant, {"total_tokens": 0}, data.clock())
            return error_response(exc)
        # the index updates and these metrics run once the request is on its way (the next
        # loop iteration: see Scheduler.schedule), off the request's latency
        asyncio.get_running_loop().call_soon(
            self._books_after_send, decision, took, model, target, len(raw))
        body = self._upstream_body(ireq, raw, ireq.body is not original_body, flight)
        try:
            return await self._forward(request, ireq, decision, body, candidates, flight)
        finally:
            if self.admission is not None:
                self.admission.pump()  # capacity freed: release waiting requests
            if tenant is not None and self.tenants is not None:
                await self.tenants.settle(tenant, flight.usage, data.clock())
            if self.semantic is not None and flight.reply is not None:
                self.semantic.store(ireq, tenant.tenant.name if tenant else None, flight.reply)

    def _books_after_send(self, decision: Decision, took: float, model: str, target: str,
                          body_bytes: int) -> None:
        decision.pool.scheduler.run_deferred_hooks()
        self.obs.scheduled(took, decision.request.prefix_cache_hit_ratio)
        self.obs.request_started(model, target, body_bytes)

    def close(self) -> None:
        """Close the idle upstream connections (at shutdown)."""
        self.upstream.close()

    def _upstream_body(self, ireq: InferenceRequest, raw: bytes, body_changed: bool,
                       flight: _Flight) -> bytes:
        """The body to send; sets `flight.rewriter` when the response needs changing.

        The upstream gets the target model (routes, aliases, semantic picks; for routes and
        aliases the client's name is written back into the response). With admission or
        tenants on, streaming requests also get `stream_options.include_usage` so usage is
        always known (the usage chunk is then hidden from a client that did not ask).
        """
        inject = self.admission is not None or self.tenants is not None
        if not (inject or body_changed or ireq.target_model != ireq.model):
            return raw
        up = prepare_upstream_body(ireq.body, api=ireq.api, target_model=ireq.target_model,
                                   inject_usage=inject)
        if flight.rename is not None or up.injected:
            target, client = flight.rename or (None, None)
            flight.rewriter = ResponseRewriter(strip_usage=up.injected, target_model=target,
                                               client_model=client)
        return up.body

    async def _forward(self, request: web.Request, ireq: InferenceRequest, decision: Decision,
                       body: bytes, candidates: list[Endpoint], flight: _Flight
                       ) -> web.StreamResponse:
        """Send, relay, and account exactly once whatever happens."""
        data, obs = self.data, self.obs
        order = list(decision.result.targets)
        order += [ep for ep in candidates if ep not in order]
        if len(order) < MAX_ATTEMPTS:  # retries may also go to ready endpoints with stale metrics
            every = data.ready_endpoints(decision.pool, data.clock(), prefer_fresh=False)
            order += [ep for ep in every if ep not in order]
        if self.health is not None and len(order) > 2:  # retries go to healthy-looking ones
            streak = self.health.failure_streak
            pool = decision.pool.model
            order[1:] = sorted(order[1:], key=lambda ep: streak(pool, ep) > 0)
        try:
            headers = forward_request_headers(request.headers)
            if self.tenants is not None:  # the caller's gateway key stays here
                headers = {k: v for k, v in headers.items()
                           if k.lower() not in ("authorization", "x-api-key")}
            await self._connect(flight, decision, order[:MAX_ATTEMPTS], body, headers,
                                request.rel_url.raw_path_qs)
            return await self._relay(flight, request, ireq, decision.pool.model)
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
            data.router.finish(decision, data.clock(), flight.usage)
            if flight.endpoint is not None:
                obs.released(decision.pool.model, flight.endpoint.name)
            obs.request_finished(ireq.model, ireq.target_model,
                                 latency=data.clock() - ireq.arrival_time, ttft=flight.ttft,
                                 usage=flight.usage, response_bytes=flight.nbytes,
                                 error_code=flight.error_code)

    def _outcome(self, pool: str, ep: Endpoint, ok: bool) -> None:
        if self.health is not None:
            self.health.record(pool, ep, ok)

    async def _connect(self, flight: _Flight, decision: Decision, order: list[Endpoint],
                       body: bytes, headers: dict[str, str], url_path: str) -> None:
        """Get the response headers and first body chunk from the target, retrying on the next
        endpoint after a connect failure, a 5xx or a first-byte timeout; sets
        `flight.endpoint`, `flight.upstream` and `flight.first`."""
        data, obs, pool = self.data, self.obs, decision.pool.model
        up = self.config.upstream
        for attempt, ep in enumerate(order):
            last = attempt == len(order) - 1
            if flight.endpoint is not None:
                obs.released(pool, flight.endpoint.name)
                obs.retried(pool)
                await asyncio.sleep(retry_delay(attempt, up.retry_backoff, up.retry_backoff_max))
            data.router.dispatch(decision, ep, data.clock())
            obs.dispatched(pool, ep.name)
            flight.endpoint = ep
            upstream: UpstreamResponse | None = None
            first_byte = asyncio.timeout(up.first_byte_timeout)
            try:
                async with first_byte:
                    upstream = await self.upstream.post(
                        ep.host.strip("[]"), ep.port, url_path, headers, body,
                        tls=ep.scheme == "https", total_timeout=up.request_timeout)
                    if upstream.status < 500 or last:
                        flight.first = await upstream.readany()
            except TimeoutError as exc:
                if upstream is not None:
                    upstream.close()  # abandoned: the model server sees the disconnect
                self._outcome(pool, ep, False)
                if not last and (first_byte.expired()
                                 or isinstance(exc, ConnectTimeout)):
                    log.warning("%s timed out before the first byte; retrying elsewhere",
                                ep.name)
                    continue
                raise UpstreamTimeout(f"model server {ep.name} did not answer in time") \
                    from None
            except OSError as exc:  # refused, unreachable, reset, closed, bad HTTP
                if upstream is not None:
                    upstream.close()
                self._outcome(pool, ep, False)
                if not last:
                    log.warning("request to %s failed (%s); retrying elsewhere", ep.name, exc)
                    continue
                raise UpstreamError(f"model server {ep.name} is unreachable: "
                                    f"{type(exc).__name__}") from None
            if upstream.status >= 500:
                self._outcome(pool, ep, False)
                if not last:
                    log.warning("%s answered %d; retrying elsewhere", ep.name, upstream.status)
                    upstream.release()
                    continue
            if flight.first:
                flight.ttft = data.clock() - flight.arrival
                data.router.first_token(decision, data.clock())
            flight.upstream = upstream
            return
        raise NoEndpointAvailable("no endpoint could be tried")  # pragma: no cover

    async def _relay(self, flight: _Flight, request: web.Request, ireq: InferenceRequest,
                     pool: str) -> web.StreamResponse:
        """Stream the upstream response to the client, reading usage on the way."""
        upstream, ep = flight.upstream, flight.endpoint
        assert upstream is not None and ep is not None
        clock = self.data.clock
        stream = "text/event-stream" in upstream.headers.get("content-type", "")
        plain = "content-encoding" not in upstream.headers
        rename = flight.rename if plain else None
        relay = ResponseRelay(stream, flight.rewriter if plain else None, rename)
        out_headers = forward_response_headers(upstream.headers)
        if rename is not None:  # the body may change length
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
        resp = _RelayResponse(status=upstream.status, reason=upstream.reason,
                              headers=out_headers)
        resp.headers[SERVED_HEADER] = ep.name
        resp.headers.update(flight.headers)
        await resp.prepare(request)
        tracker = UsageTracker(stream, relay.rewriter) if plain else None
        collector = None
        if self.semantic is not None and plain and upstream.status == 200:
            if stream:
                collector = self.semantic.collector(ireq)
            elif tracker is not None:
                tracker.keep_document()
        read = upstream.readany
        watch = _IdleWatch(self.config.upstream.idle_timeout, upstream.close)
        chunk, flight.first = flight.first, b""
        try:
            while chunk:
                if flight.ttft is None:
                    flight.ttft = clock() - ireq.arrival_time
                flight.nbytes += len(chunk)
                if tracker is not None:
                    tracker.feed(chunk)
                if collector is not None:
                    collector.feed(chunk)
                out = relay.feed(chunk)
                if out:
                    await resp.write(out)
                watch.reading = True  # only waits for upstream count: a slow client is fine
                chunk = await read()
                watch.reading = False
            if watch.fired:  # closed by the watch: the read may have ended "normally"
                raise TimeoutError
            out = relay.finish()
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
            self._outcome(pool, ep, False)
            log.warning("upstream %s failed mid-response: %s", ep.name, type(exc).__name__)
            upstream.close()
            ending = relay.fail((UpstreamTimeout if timeout else UpstreamError)(
                f"model server {ep.name} failed mid-stream"))
            if ending is not None:  # an event stream: error event, [DONE], clean end
                await resp.write(ending)
                await resp.write_eof()
            elif request.transport is not None:
                # headers are out: cut the connection so the client sees a truncated body
                request.transport.close()
            return resp
        finally:
            watch.cancel()
        if upstream.status < 500:
            self._outcome(pool, ep, True)
        if tracker is not None:
            flight.usage = tracker.finish()
        if collector is not None:
            flight.reply = collector.reply()
        elif tracker is not None and tracker.document:
            flight.reply = tracker.document
        if upstream.status >= 400:
            flight.error_code = str(upstream.status)
        await resp.write_eof()
        upstream.release()
        return resp


class _RelayResponse(web.StreamResponse):
    """A StreamResponse whose headers leave with its first body write, in one send.

    aiohttp sends a StreamResponse's headers as soon as it is prepared; the relay always has
    a first chunk in hand by then, so holding them saves a send per response (aiohttp's
    buffered `Response` does the same). Loopback sends are what the gateway spends most of its
    per-request CPU on (`inferoute overhead`). `_send_headers_immediately` is aiohttp's own
    switch for this (3.10+); on a version without it, this is a plain StreamResponse.
    """

    _send_headers_immediately = False


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
    #: (target, client) model names to write back into the response
    rename: tuple[str, str] | None = None
    rewriter: ResponseRewriter | None = None
    #: extra response headers (semantic routing)
    headers: dict[str, str] = field(default_factory=dict)
    #: a finished 2xx reply to offer to the semantic cache
    reply: Any = None
