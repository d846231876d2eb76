"""The endpoint-picker side of one Envoy ext_proc stream, as a pure state machine.

One HTTP request through Envoy is one gRPC stream of `ProcessingRequest`s. `PickerStream`
consumes them in order (`handle(message, now)`) and returns the `ProcessingResponse`s to send
back; it performs no I/O and reads no clock, so every rule below is unit-tested with fake
messages. The rules follow the Gateway API Inference Extension's endpoint-picker protocol:

* Request headers are held (no answer) until the whole body has arrived, when Envoy runs the
  request body in FULL_DUPLEX_STREAMED mode (the reference set-up). The body is accumulated up to
  a bound (413 beyond it), parsed with the core's `parse_request` (API from `:path`), resolved,
  admitted and scheduled with the core `Router`.
* The answer: a headers response with `clear_route_cache`, header
  `x-gateway-destination-endpoint: ip:port` (optionally followed by fallbacks, comma-separated),
  a fixed `Content-Length`, client-supplied `x-gateway-destination-endpoint*` headers removed, and
  the same endpoint in dynamic metadata `envoy.lb`; then the body in streamed chunks of at most
  62,000 bytes, the last with end_of_stream. The body is re-serialised only when the model was
  rewritten (header `x-gateway-model-name-rewrite` or a model alias).
* In BUFFERED mode (announced by Envoy in `protocol_config`) the headers are answered at once and
  the routing mutation rides on the body response instead.
* Errors end the stream with an ImmediateResponse and an OpenAI-style JSON body: 400 invalid
  body, 404 unknown model, 413 body too large, 429 shed, 503 no ready endpoint.
* Response phase: the endpoint Envoy reports in metadata `envoy.lb /
  x-gateway-destination-endpoint-served` moves the in-flight bookkeeping there if it differs;
  usage is read from the (streamed) response body; the request is finished exactly once, on the
  end of the response or in `close()` when the stream ends early.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import orjson
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

from ..core.endpoint import Endpoint
from ..core.errors import (BadRequest, InferouteError, ModelNotFound, NoEndpointAvailable,
                           PayloadTooLarge)
from ..core.request import API_PATHS, InferenceRequest, decode_body, parse_request
from ..core.router import Decision, ModelPool, Router
from . import messages as m
from ..core.sse import UsageTracker

DESTINATION_HEADER = "x-gateway-destination-endpoint"
DESTINATION_NAMESPACE = "envoy.lb"
SERVED_KEY = "x-gateway-destination-endpoint-served"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
MODEL_REWRITE_HEADER = "x-gateway-model-name-rewrite"
#: request headers meant for the picker only: removed before the request goes upstream
PICKER_ONLY_HEADERS = (OBJECTIVE_HEADER, FAIRNESS_HEADER, MODEL_REWRITE_HEADER)

_Mode = processing_mode_pb2.ProcessingMode
FULL_DUPLEX = _Mode.FULL_DUPLEX_STREAMED
BUFFERED = _Mode.BUFFERED
MODE_NAMES = {"full-duplex": FULL_DUPLEX, "buffered": BUFFERED}


class AdmitFn(Protocol):
    """Admission control, before scheduling: raise TooManyRequests to shed the request; return
    None (or an object whose `admitted` is true) to go ahead, or a ticket to make it wait."""

    def __call__(self, request: InferenceRequest, pool: ModelPool, now: float) -> Any: ...


class StreamObserver(Protocol):
    """Where a stream reports what metrics need; the server wires it to the shared metrics."""

    def routed(self, stream: "PickerStream", now: float) -> None:
        """Scheduled and dispatched to `stream.decision.endpoint`."""

    def moved(self, stream: "PickerStream", old: Endpoint, now: float) -> None:
        """The proxy served from another endpoint than the one dispatched to (`old`)."""

    def rejected(self, stream: "PickerStream", error: InferouteError, now: float) -> None:
        """Refused before scheduling succeeded (bad body, unknown model, shed, no endpoint)."""

    def finished(self, stream: "PickerStream", now: float) -> None:
        """A routed request is over (completed, failed or cut short); called once."""


class NullObserver:
    def routed(self, stream: "PickerStream", now: float) -> None:
        pass

    def moved(self, stream: "PickerStream", old: Endpoint, now: float) -> None:
        pass

    def rejected(self, stream: "PickerStream", error: InferouteError, now: float) -> None:
        pass

    def finished(self, stream: "PickerStream", now: float) -> None:
        pass


@dataclass(slots=True)
class PickerSettings:
    """Knobs of the picker protocol; the defaults are the reference picker's."""

    max_body_bytes: int = 32 * 1024 * 1024
    chunk_limit: int = m.BODY_CHUNK_LIMIT
    #: fallback endpoints appended to the destination header (0: the target only, which is what
    #: an ORIGINAL_DST cluster accepts)
    fallbacks: int = 0
    #: body mode assumed when Envoy does not announce it in `protocol_config`
    assumed_mode: int = FULL_DUPLEX


@dataclass
class EndpointPicker:
    """What every stream shares: the router, admission, metrics and settings."""

    router: Router
    settings: PickerSettings = field(default_factory=PickerSettings)
    admit: AdmitFn | None = None
    observer: StreamObserver = field(default_factory=NullObserver)
    #: the endpoints of a pool that may be picked now (default: its healthy ones); the data
    #: layer narrows this to endpoints with fresh metrics
    candidates: Callable[[ModelPool, float], list[Endpoint]] | None = None
    #: the pool for a model name no pool claims (the reference picker passes any model through
    #: to its one InferencePool); None answers 404 instead
    default_model: str | None = None
    #: model routing rules: may set `request.target_model` (not applied when the proxy sent
    #: `x-gateway-model-name-rewrite`)
    route_model: Callable[[InferenceRequest], None] | None = None
    #: measures the scheduling decision (wall time, for the scheduler latency metric)
    timer: Callable[[], float] = time.perf_counter
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def stream(self) -> "PickerStream":
        return PickerStream(self)

    def next_request_id(self) -> str:
        return f"epp-{next(self._ids)}"


class PickerStream:
    """The state of one ext_proc stream (one HTTP request and its response)."""

    def __init__(self, picker: EndpointPicker) -> None:
        self.picker = picker
        self.settings = picker.settings
        self.request_mode: int | None = None
        self.response_mode: int | None = None
        self.hold_headers = True
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.routed = False
        self.done = False
        self.request: InferenceRequest | None = None
        self.decision: Decision | None = None
        self.destination: str = ""
        self.request_size = 0
        self.schedule_seconds = 0.0
        self.error: InferouteError | None = None
        self.received_at: float | None = None
        self.routed_at: float | None = None
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.status = 0
        self.usage_tracker: UsageTracker | None = None
        self.response_bytes = 0
        self.usage: dict[str, Any] | None = None
        self.completed = False
        #: the admission ticket while flow control keeps the request waiting
        self.waiting: Any = None
        self._raw = b""
        self._trailers_follow = False
        self._pool: ModelPool | None = None
        #: the proxy's endpoint subset hint (ip:port or ip), when it sends one
        self._allowed: set[str] | None = None

    # -- entry points -------------------------------------------------------------------------

    def handle(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        """Consume one message from Envoy; return the messages to send back, in order."""
        if self.done:
            return []
        if self.request_mode is None:
            self._read_modes(req)
        kind = req.WhichOneof("request")
        try:
            if kind == "request_headers":
                return self._on_request_headers(req, now)
            if kind == "request_body":
                return self._on_request_body(req, now)
            if kind == "request_trailers":
                return self._on_request_trailers(req, now)
            if kind == "response_headers":
                return self._on_response_headers(req, now)
            if kind == "response_body":
                return self._on_response_body(req, now)
            if kind == "response_trailers":
                self._finish(now, completed=True)
                return [m.trailers_response(request=False)]
        except InferouteError as err:
            return self._fail(err, now)
        return []

    def close(self, now: float) -> None:
        """The gRPC stream is over, however it ended: release the request's bookkeeping."""
        self._finish(now, completed=False)

    # -- request phase ------------------------------------------------------------------------

    def _read_modes(self, req: m.ProcessingRequest) -> None:
        if req.HasField("protocol_config"):
            pc = req.protocol_config
            self.request_mode = pc.request_body_mode
            self.response_mode = pc.response_body_mode
            waits = not pc.send_body_without_waiting_for_header_response
        else:
            self.request_mode = self.response_mode = self.settings.assumed_mode
            waits = self.request_mode != FULL_DUPLEX
        # Envoy waits for our header answer before sending the body unless full duplex.
        self.hold_headers = self.request_mode == FULL_DUPLEX or not waits

    def _on_request_headers(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        self.received_at = now
        self.headers = m.header_map(req.request_headers)
        if req.request_headers.end_of_stream or self.request_mode == _Mode.NONE:
            return [self._route_bodyless(now)]
        if self.request_mode == _Mode.STREAMED and not self.hold_headers:
            raise InferouteError(
                "the endpoint picker needs the request body before the headers go upstream: "
                "set the ext_proc request_body_mode to FULL_DUPLEX_STREAMED or BUFFERED")
        if self.hold_headers:
            return []
        return [m.headers_response(request=True)]

    def _on_request_body(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        if self.routed:
            raise BadRequest("request body continued after its end of stream")
        piece = req.request_body.body
        if len(self.body) + len(piece) > self.settings.max_body_bytes:
            self.body = bytearray()
            raise PayloadTooLarge(
                f"request body exceeds {self.settings.max_body_bytes} bytes")
        self.body += piece
        if not req.request_body.end_of_stream:
            return []
        return self._route(req, now, trailers_follow=False)

    def _on_request_trailers(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        out = [] if self.routed else self._route(req, now, trailers_follow=True)
        return out + [m.trailers_response(request=True)]

    def _route(self, req: m.ProcessingRequest, now: float,
               trailers_follow: bool) -> list[m.ProcessingResponse]:
        """The body is complete: parse, admit, schedule and answer with the destination."""
        self.routed = True
        self._trailers_follow = trailers_follow
        self._raw = bytes(self.body)
        self.body = bytearray()
        request = self._parse(self._raw, now)
        self.request = request
        pool = self._resolve(request)
        if request.target_model in pool.aliases:
            request.target_model = pool.model
        self._pool = pool
        hint = m.filter_metadata(req, SUBSET_NAMESPACE).get(SUBSET_KEY)
        if hint is not None:
            self._allowed = {str(x) for x in hint} if isinstance(hint, list) else {str(hint)}
        if self.picker.admit is not None:
            ticket = self.picker.admit(request, pool, now)
            if ticket is not None and not getattr(ticket, "admitted", False):
                # queued by flow control: the server waits, then calls resume() or reject()
                self.waiting = ticket
                return []
        return self._schedule(now)

    def resume(self, now: float) -> list[m.ProcessingResponse]:
        """Flow control released the waiting request: schedule it now."""
        self.waiting = None
        try:
            return self._schedule(now)
        except InferouteError as err:
            return self._fail(err, now)

    def reject(self, err: InferouteError, now: float) -> list[m.ProcessingResponse]:
        """Flow control gave up on the waiting request (TTL, pool gone)."""
        self.waiting = None
        return self._fail(err, now)

    def _schedule(self, now: float) -> list[m.ProcessingResponse]:
        request, router = self.request, self.picker.router
        assert request is not None
        assert self._pool is not None
        candidates = self._candidates(self._pool, now)
        t0 = self.picker.timer()
        # the pool is already resolved (possibly the default pool for an unclaimed name)
        result = self._pool.scheduler.schedule(request, candidates, now)
        self.schedule_seconds = self.picker.timer() - t0
        decision = Decision(request=request, pool=self._pool, result=result)
        targets = decision.result.targets
        router.dispatch(decision, targets[0], now)
        self.decision = decision
        self.routed_at = now
        self.destination = ",".join(ep.name for ep in targets[: 1 + self.settings.fallbacks])
        raw, body = self._raw, self._raw
        self._raw = b""
        if request.target_model != request.model:
            request.body["model"] = request.target_model
            body = orjson.dumps(request.body)
        self.request_size = len(body)
        self.picker.observer.routed(self, now)
        return self._routing_responses(body, rewritten=body is not raw,
                                       end_of_stream=not self._trailers_follow)

    def _parse(self, raw: bytes, now: float) -> InferenceRequest:
        path = self.headers.get(":path", "").split("?", 1)[0]
        api = API_PATHS.get(path.rstrip("/"))
        headers = {k: v for k, v in self.headers.items() if not k.startswith(":")}
        rid = headers.get("x-request-id") or self.picker.next_request_id()
        if api is not None:
            request = parse_request(api, raw, headers, request_id=rid, arrival_time=now)
        else:
            # other OpenAI-style endpoints (embeddings, ...): route on `model` alone
            body = decode_body(raw)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise BadRequest("'model' is required and must be a non-empty string",
                                 param="model")
            request = InferenceRequest(request_id=rid, api="completions", model=model,
                                       body=body, headers=headers, prefix_text="",
                                       arrival_time=now, body_size=len(raw))
        rewrite = headers.get(MODEL_REWRITE_HEADER)
        if rewrite:
            request.target_model = rewrite
        elif self.picker.route_model is not None:
            self.picker.route_model(request)
        if headers.get(OBJECTIVE_HEADER):
            request.objective = headers[OBJECTIVE_HEADER]
        if headers.get(FAIRNESS_HEADER):
            request.fairness_id = headers[FAIRNESS_HEADER]
        return request

    def _resolve(self, request: InferenceRequest) -> ModelPool:
        router = self.picker.router
        try:
            return router.resolve(request)
        except ModelNotFound:
            default = self.picker.default_model
            if default is None or default not in router.pools:
                raise
            return router.pools[default]

    def _ready(self, pool: ModelPool, now: float) -> list[Endpoint]:
        if self.picker.candidates is None:
            return self.picker.router.candidates(pool, now)
        return self.picker.candidates(pool, now)

    def _candidates(self, pool: ModelPool, now: float) -> list[Endpoint]:
        """Ready endpoints, restricted to the proxy's subset hint when it sent one."""
        ready = self._ready(pool, now)
        if self._allowed is None:
            return ready
        eps = [ep for ep in ready if ep.name in self._allowed or ep.host in self._allowed]
        if not eps:
            raise NoEndpointAvailable("no ready endpoint of model "
                                      f"{pool.model!r} is in the proxy's endpoint subset")
        return eps

    def _routing_headers(self, body_len: int, with_length: bool) -> m.pb.HeaderMutation:
        set_headers = {DESTINATION_HEADER: self.destination}
        if with_length:
            set_headers["content-length"] = str(body_len)
        remove = [k for k in self.headers
                  if (k.startswith(DESTINATION_HEADER) and k != DESTINATION_HEADER)
                  or k in PICKER_ONLY_HEADERS]
        return m.header_mutation(set_headers, remove)

    def _metadata(self) -> Any:
        return m.endpoint_metadata(DESTINATION_NAMESPACE, DESTINATION_HEADER, self.destination)

    def _routing_responses(self, body: bytes, rewritten: bool,
                           end_of_stream: bool) -> list[m.ProcessingResponse]:
        if self.request_mode == FULL_DUPLEX:
            # Envoy drops Content-Length for a full-duplex body: restore it.
            common = m.pb.CommonResponse(
                clear_route_cache=True,
                header_mutation=self._routing_headers(len(body), with_length=bool(body)))
            return [m.headers_response(common, request=True, metadata=self._metadata()),
                    *m.streamed_bodies(body, request=True, end_of_stream=end_of_stream,
                                       limit=self.settings.chunk_limit)]
        # buffered: the body goes back whole, and only when it changed
        mutation = m.pb.BodyMutation(body=body) if rewritten else None
        if self.hold_headers:
            common = m.pb.CommonResponse(
                clear_route_cache=True,
                header_mutation=self._routing_headers(len(body), with_length=rewritten))
            return [m.headers_response(common, request=True, metadata=self._metadata()),
                    m.body_response(m.pb.CommonResponse(body_mutation=mutation), request=True)]
        common = m.pb.CommonResponse(
            clear_route_cache=True, body_mutation=mutation,
            header_mutation=self._routing_headers(len(body), with_length=rewritten))
        return [m.body_response(common, request=True, metadata=self._metadata())]

    def _route_bodyless(self, now: float) -> m.ProcessingResponse:
        """A request without a body (GET /v1/models ...): any ready endpoint will do."""
        self.routed = True
        eps = [ep for mp in self.picker.router.pools.values() for ep in self._ready(mp, now)]
        if not eps:
            raise NoEndpointAvailable("no ready endpoint")
        ep = min(eps, key=lambda e: e.in_flight_requests)
        self.destination = ep.name
        common = m.pb.CommonResponse(clear_route_cache=True,
                                     header_mutation=self._routing_headers(0, False))
        return m.headers_response(common, request=True, metadata=self._metadata())

    # -- response phase -----------------------------------------------------------------------

    def _on_response_headers(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        headers = m.header_map(req.response_headers)
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        served = m.filter_metadata(req, DESTINATION_NAMESPACE).get(SERVED_KEY)
        if isinstance(served, str) and served and self.decision is not None:
            self._served(served, now)
        ctype = headers.get("content-type", "")
        # a compressed body cannot be read for usage: pass it through untouched
        if "content-encoding" not in headers:
            self.usage_tracker = UsageTracker("text/event-stream" in ctype)
        out = [m.headers_response(request=False)]
        if req.response_headers.end_of_stream:
            self._finish(now, completed=True)
        return out

    def _served(self, served: str, now: float) -> None:
        """Envoy reports where the request went (a fallback after a failed attempt, maybe)."""
        assert self.decision is not None
        current = self.decision.endpoint
        if current is not None and current.name == served:
            return
        ep = self.decision.pool.pool.get(served)
        if ep is not None and current is not None:
            self.picker.router.dispatch(self.decision, ep, now)
            self.picker.observer.moved(self, current, now)

    def _on_response_body(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        rb = req.response_body
        if self.first_byte_at is None and rb.body:
            self.first_byte_at = now
            if self.decision is not None:
                self.picker.router.first_token(self.decision, now)
        self.response_bytes += len(rb.body)
        if self.usage_tracker is not None:
            self.usage_tracker.feed(rb.body)
            if rb.end_of_stream:
                self.usage = self.usage_tracker.finish()
        if self.response_mode == FULL_DUPLEX:
            out = m.streamed_bodies(rb.body, request=False, end_of_stream=rb.end_of_stream,
                                    limit=self.settings.chunk_limit)
        else:
            out = [m.body_response(request=False)]
        if rb.end_of_stream:
            self._finish(now, completed=True)
        return out

    # -- endings ------------------------------------------------------------------------------

    def _fail(self, err: InferouteError, now: float) -> list[m.ProcessingResponse]:
        self.error = err
        self.done = True
        if self.decision is None:
            self.picker.observer.rejected(self, err, now)
        self._finish(now, completed=False)
        return [m.immediate_error(err)]

    def _finish(self, now: float, completed: bool) -> None:
        if self.finished_at is not None:
            return
        self.finished_at = now
        if self.usage is None and self.usage_tracker is not None:
            self.usage = self.usage_tracker.finish()
        self.completed = completed and 200 <= self.status < 400
        if self.decision is not None:
            self.picker.router.finish(self.decision, now, self.usage)
            self.picker.observer.finished(self, now)

