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

Retries: a connect failure, a 5xx, a 429, a 404 for the pool's own model (a replica that
serves another model: it is taken out until its `/v1/models` lists the model, see `health.py`)
or no first body byte within `firstByteTimeout` moves the request to the next endpoint: the
decision's targets (the picker's fallbacks), the other candidates, then every other ready
endpoint, those on a failure streak or backing off last; every endpoint is tried once, within
the request's deadline (`requestTimeout`, when set), after a short jittered backoff (`retry_delay`; never
before the first attempt). A 429 or 503 is back-pressure, not a failure: the replica is
skipped for its Retry-After (1 s without one, 30 s at most) while others are left. The
client's response starts with its first byte, so until then nothing is lost by a retry,
including a stream that failed upstream before a whole event arrived (the abandoned attempt's
connection is closed, which vLLM takes as an abort). The last attempt's timeout maps to 504, its
connect failure to 502, its status is relayed. After the first byte, a gap longer than
`idleTimeout` or a model server failing mid-response ends an event stream with an error event
and `data: [DONE]` (the OpenAI SDK raises it as an APIError); a plain body is cut off. A client
that disconnects cancels the upstream request the same way.

When every endpoint of a pool is unready only because its metrics are stale (a starved gateway
host stops scraping in time, not the replicas), requests go to the healthy endpoints with the
fewest requests in flight from this gateway, counted in
`inferoute_stale_metrics_fallback_total{pool}` and logged when it starts and ends.

Limits: at most `maxConcurrentRequests` API requests are in progress (queued and streaming ones
included); one more gets an immediate 503 with `Retry-After`, never a wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import compression_utils, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import Counter

from ..core.admission.usage import ResponseRewriter, prepare_upstream_body
from ..core.endpoint import Endpoint
from ..core.errors import (InferouteError, ModelNotFound, NoEndpointAvailable,
                           PayloadTooLarge, UpstreamError, UpstreamTimeout)
from ..core.request import API_PATHS, InferenceRequest, parse_request
from ..core.router import Decision, ModelPool
from ..datalayer.admission_driver import AdmissionDriver
from ..datalayer.serving_config import ServingConfig
from ..datalayer.runtime import DataLayer
from ..observability import Observability
from .health import EndpointHealth
from .httperrors import BodyTimeout, UnreadableBody, UnsupportedMediaType, error_body
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
#: the body is forwarded as read, decoded: its client-side Content-Encoding must not go along
_DROP_REQUEST = _HOP_BY_HOP | {"host", "content-length", "content-encoding"}
#: request Content-Encodings the server decodes (aiohttp), the others get 415
_DECODED = frozenset({"", "identity", "gzip", "deflate"} |
                     ({"br"} if compression_utils.HAS_BROTLI else set()) |
                     ({"zstd"} if getattr(compression_utils, "HAS_ZSTD", False) else set()))
_DROP_RESPONSE = _HOP_BY_HOP
_BACK_PRESSURE = frozenset({429, 503})
#: how long a replica that said 429/503 is skipped: its Retry-After, within these bounds
BACK_OFF_DEFAULT, BACK_OFF_MAX = 1.0, 30.0
#: how much of a model server's non-JSON error body is quoted in the gateway's error
WRAPPED_ERROR_BYTES = 512


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
        #: pools routed on in-flight counts because every endpoint's metrics are stale
        self._stale_pools: set[str] = set()
        self._stale_fallback = Counter(
            "inferoute_stale_metrics_fallback_total",
            "Requests routed on the gateway's own in-flight counts because every endpoint's "
            "metrics were stale.", ("pool",), registry=obs.registry)

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
                tenant = await self.tenants.admit(ireq, now, self._context_length(model))
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
            candidates = self._candidates(mp, now)
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
                up = flight.upstream  # set once a response was relayed
                await self.tenants.settle(tenant, flight.usage, data.clock(),
                                          rejected=up is None or up.status >= 400)
            if self.semantic is not None and flight.reply is not None:
                self.semantic.store(ireq, tenant.tenant.name if tenant else None, flight.reply)

    def _context_length(self, model: str) -> int | None:
        """The context length the endpoints of `model`'s pool reported, if any."""
        if self.health is None:
            return None
        for mp in self.data.router.pools.values():
            if model == mp.model or model in mp.aliases or model in mp.lora_adapters:
                return self.health.context_lengths.get(mp.model)
        return None

    def _candidates(self, mp: ModelPool, now: float) -> list[Endpoint]:
        """The ready endpoints of `mp`, minus those backing off (429/503) while others are
        left; when none is ready only because every scrape is stale (the gateway's own host
        starved, not the replicas), the healthy endpoints with the fewest requests in flight
        from this gateway. NoEndpointAvailable says why when nothing can take the request."""
        ready = self.data.ready_endpoints(mp, now)
        health = self.health
        if ready and health is not None:
            ready = [ep for ep in ready if not health.backing_off(mp.model, ep)] or ready
        pool = mp.model
        if ready:
            if pool in self._stale_pools:
                self._stale_pools.discard(pool)
                log.info("pool '%s': fresh metrics again; routing on them", pool)
            return ready
        alive = [ep for ep in mp.pool if ep.healthy and ep.metrics.scraped_at is not None]
        if alive and self.data.scrape:
            least = min(ep.in_flight_requests for ep in alive)
            self._stale_fallback.labels(pool).inc()
            if pool not in self._stale_pools:
                self._stale_pools.add(pool)
                log.warning("pool '%s': every endpoint's metrics are stale; routing on this "
                            "gateway's own in-flight counts until a scrape succeeds", pool)
            return [ep for ep in alive if ep.in_flight_requests == least]
        problems = health.problems(pool) if health is not None else []
        if problems:
            raise NoEndpointAvailable(f"no endpoint of pool '{pool}' can serve it: "
                                      + "; ".join(problems[:3]), code="model_not_served")
        raise NoEndpointAvailable(f"no ready endpoint for model '{pool}'")

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
        order = self._attempt_order(decision, candidates)
        # retries end at requestTimeout; without one each attempt has its firstByteTimeout
        deadline = asyncio.get_running_loop().time() + (self.config.upstream.request_timeout
                                                         or math.inf)
        try:
            headers = forward_request_headers(request.headers)
            if self.tenants is not None:  # the caller's gateway key stays here
                headers = {k: v for k, v in headers.items()
                           if k.lower() not in ("authorization", "x-api-key")}
            while True:
                await self._connect(flight, decision, ireq, order, deadline, body, headers,
                                    request.rel_url.raw_path_qs)
                try:
                    return await self._relay(flight, request, ireq, decision.pool.model)
                except _NothingRelayed as exc:  # failed before a byte reached the client
                    if not order or asyncio.get_running_loop().time() >= deadline:
                        raise exc.error from None
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
            data.router.finish(decision, data.clock(), flight.usage)
            if flight.endpoint is not None:
                obs.released(decision.pool.model, flight.endpoint.name)
            obs.request_finished(ireq.model, ireq.target_model,
                                 latency=data.clock() - ireq.arrival_time, ttft=flight.ttft,
                                 usage=flight.usage, response_bytes=flight.nbytes,
                                 error_code=flight.error_code)

    def _attempt_order(self, decision: Decision, candidates: list[Endpoint]) -> list[Endpoint]:
        """Every endpoint a request may be tried on, in order: the decision's targets, the
        other candidates, then every other ready endpoint (stale metrics included); those on a
        failure streak or backing off go last."""
        order = list(decision.result.targets)
        order += [ep for ep in candidates if ep not in order]
        every = self.data.ready_endpoints(decision.pool, self.data.clock(), prefer_fresh=False)
        order += [ep for ep in every if ep not in order]
        health = self.health
        if health is not None and len(order) > 2:
            pool = decision.pool.model
            order[1:] = sorted(order[1:], key=lambda ep: (
                health.failure_streak(pool, ep) > 0 or health.backing_off(pool, ep)))
        return order

    def _outcome(self, pool: str, ep: Endpoint, ok: bool) -> None:
        if self.health is not None:
            self.health.record(pool, ep, ok)

    async def _connect(self, flight: _Flight, decision: Decision, ireq: InferenceRequest,
                       order: list[Endpoint], deadline: float, body: bytes,
                       headers: dict[str, str], url_path: str) -> None:
        """Get the response headers and first body chunk from the next endpoint of `order`
        (taken from its front), moving on after a connect failure, a 5xx, a 429/503
        (back-pressure: backed off, not a failure), a 404 for the pool's own model (a replica
        serving another model), or a first-byte timeout, until every endpoint was tried once
        or the request's `deadline` (loop time) is near; sets `flight.endpoint`,
        `flight.upstream` and `flight.first`."""
        data, obs, pool = self.data, self.obs, decision.pool.model
        up = self.config.upstream
        loop = asyncio.get_running_loop()
        attempt = 0
        while order:
            ep = order.pop(0)
            if flight.endpoint is not None:
                obs.released(pool, flight.endpoint.name)
                obs.retried(pool)
                attempt += 1
                delay = retry_delay(attempt, up.retry_backoff, up.retry_backoff_max)
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            last = not order or loop.time() >= deadline
            data.router.dispatch(decision, ep, data.clock())
            obs.dispatched(pool, ep.name)
            flight.endpoint = ep
            upstream: UpstreamResponse | None = None
            first_byte = asyncio.timeout(min(up.first_byte_timeout,
                                             max(0.001, deadline - loop.time())))
            try:
                async with first_byte:
                    upstream = await self.upstream.post(
                        ep.host.strip("[]"), ep.port, url_path, headers, body,
                        tls=ep.scheme == "https", total_timeout=up.request_timeout)
                    if not _retried(upstream.status) or last:
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
            status = upstream.status
            if status in _BACK_PRESSURE:  # "not now": leave it alone a while, not a failure
                if self.health is not None:
                    self.health.back_off(pool, ep, _retry_after(upstream.headers))
            elif status >= 500:
                self._outcome(pool, ep, False)
            elif status == 404 and ireq.target_model == pool and _model_missing(flight.first):
                if self.health is not None:  # the replica serves another model
                    self.health.not_serving(pool, ep)
                upstream.close()
                if not last:
                    log.warning("%s answered 404 for the pool's model '%s'; retrying elsewhere",
                                ep.name, pool)
                    continue
                # in the gateway's shape, as every later request gets it (issue 14, item 7)
                raise NoEndpointAvailable(
                    f"no endpoint of pool '{pool}' can serve it: {ep.name} answered 404 for "
                    f"model '{pool}'", code="model_not_served")
            if _retried(status) and not last:
                log.warning("%s answered %d; retrying elsewhere", ep.name, status)
                upstream.release()
                continue
            if flight.first:
                flight.ttft = data.clock() - flight.arrival
                data.router.first_token(decision, data.clock())
            flight.upstream = upstream
            return
        raise NoEndpointAvailable("no endpoint could be tried")

    async def _relay(self, flight: _Flight, request: web.Request, ireq: InferenceRequest,
                     pool: str) -> web.StreamResponse:
        """Stream the upstream response to the client, reading usage on the way."""
        upstream, ep = flight.upstream, flight.endpoint
        assert upstream is not None and ep is not None
        if upstream.status >= 400 and not _json_typed(upstream.headers):
            return await self._wrapped_error(flight, upstream, ep)
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
        # prepared at the first byte for the client: until then a failure is retried elsewhere
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
                    if not resp.prepared:
                        await resp.prepare(request)
                    await resp.write(out)
                watch.reading = True  # only waits for upstream count: a slow client is fine
                chunk = await read()
                watch.reading = False
            if watch.fired:  # closed by the watch: the read may have ended "normally"
                raise TimeoutError
            out = relay.finish()
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
            self._outcome(pool, ep, False)
            upstream.close()
            failure = (UpstreamTimeout if timeout else UpstreamError)(
                f"model server {ep.name} failed mid-stream ({type(exc).__name__})")
            if not resp.prepared:  # nothing reached the client: another endpoint may serve it
                flight.upstream, flight.error_code, flight.ttft = None, None, None
                raise _NothingRelayed(failure)
            log.warning("upstream %s failed mid-response: %s", ep.name, type(exc).__name__)
            ending = relay.fail(failure)
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


    async def _wrapped_error(self, flight: _Flight, upstream: UpstreamResponse,
                             ep: Endpoint) -> web.Response:
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
        said = text[:WRAPPED_ERROR_BYTES].decode("utf-8", "replace").strip() or "(no body)"
        resp = web.Response(body=error_body(upstream.status, f"model server {ep.name} answered "
                                            f"{upstream.status}: {said}"),
                            status=upstream.status, content_type="application/json")
        resp.headers[SERVED_HEADER] = ep.name
        return resp


def _retried(status: int) -> bool:
    """Statuses that send a request on to the next endpoint, when one is left: a 5xx
    (failure or back-pressure) and 429 (back-pressure)."""
    return status >= 500 or status == 429


def _retry_after(headers: Any) -> float:
    """Seconds from a Retry-After header (seconds form), bounded; the default without one."""
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return BACK_OFF_DEFAULT
    return BACK_OFF_DEFAULT if math.isnan(value) else min(BACK_OFF_MAX, max(0.0, value))


def _model_missing(body: bytes) -> bool:
    """Whether a 404 body says the model does not exist (vLLM: "The model `x` does not
    exist."; OpenAI: code model_not_found), rather than a missing route."""
    low = body[:2048].lower()
    return b"model" in low and (b"does not exist" in low or b"not found" in low
                                or b"model_not_found" in low) and b"{" in low


def _json_typed(headers: Any) -> bool:
    ctype = headers.get("content-type", "").lower()
    return "json" in ctype or "text/event-stream" in ctype


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
