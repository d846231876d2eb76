"""The endpoint-picker side of one Envoy ext_proc stream: Envoy's messages <-> lifecycle events.

One HTTP request through Envoy is one gRPC stream of `ProcessingRequest`s. `PickerStream`
consumes them in order (`handle(message, now)`) and returns the `ProcessingResponse`s to send
back; it performs no I/O and reads no clock, so every rule below is unit-tested with fake
messages. What happens to the request (parse, model route, pool, alias, admission, candidates,
scheduling, the fallbacks, accounting) is the core's `RequestLifecycle`, the same object the
HTTP gateway and the virtual benchmark drive; this module only translates. The translation
follows the Gateway API Inference Extension's endpoint-picker protocol:

* Request headers are held (no answer) until the whole body has arrived, when Envoy runs the
  request body in FULL_DUPLEX_STREAMED mode (the reference set-up). The body is accumulated up to
  a bound (413 beyond it), then fed to the lifecycle (`parse`, with the API from `:path`; the
  proxy's `x-gateway-model-name-rewrite`, objective and fairness headers and its endpoint subset
  hint; then `route`).
* `SendUpstream` becomes a headers response with `clear_route_cache`, header
  `x-gateway-destination-endpoint: ip:port` (followed by `fallbacks` more, comma-separated: the
  lifecycle's attempt plan, as the gateway would retry), a fixed `Content-Length`,
  client-supplied `x-gateway-destination-endpoint*` headers removed, and the same endpoint in
  dynamic metadata `envoy.lb`; then the body in streamed chunks of at most 62,000 bytes, the
  last with end_of_stream. The body is re-serialised only when the model was rewritten (the
  rewrite header, a model route or an alias).
* In BUFFERED mode (announced by Envoy in `protocol_config`) the headers are answered at once and
  the routing mutation rides on the body response instead.
* `Respond` ends the stream with an ImmediateResponse and an OpenAI-style JSON body: 400 invalid
  body, 404 unknown model, 413 body too large, 429 shed, 503 no ready endpoint. `Wait` leaves
  the stream open until the server's admission driver releases the ticket.
* Response phase: the endpoint Envoy reports in metadata `envoy.lb /
  x-gateway-destination-endpoint-served` moves the in-flight bookkeeping there if it differs;
  the status (and Retry-After, and for a 404 the first body bytes) go to the lifecycle, which
  tells health: back-pressure and wrong-model replicas are then skipped by later picks, and
  5xx answers count towards outlier ejection, as in the gateway (Envoy relays the answer: the
  picker cannot retry it); usage is read from the
  (streamed) response body; the request is finished exactly once, on the end of the response
  or in `close()` when the stream ends early.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

from ..core.admission.routing_rules import RoutingRules
from ..core.endpoint import Endpoint
from ..core.errors import BadRequest, InferouteError, NoEndpointAvailable, PayloadTooLarge
from ..core.lifecycle import (Action, AdmissionControl, Finish, Phase, RequestLifecycle,
                              Respond, SendUpstream, Wait)
from ..core.request import API_PATHS, InferenceRequest
from ..core.retryplan import RetryPolicy
from ..core.router import Decision, Router
from ..core.selection import CandidateSelector
from . import messages as m

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
    """What every stream shares: the router, the candidate selector, admission, metrics and
    settings; `lifecycle()` makes the core `RequestLifecycle` of one stream."""

    router: Router
    settings: PickerSettings = field(default_factory=PickerSettings)
    #: admission control (the core's `AdmissionController`): classify, then admit, queue or shed
    admission: AdmissionControl | None = None
    #: model routing rules: may set `request.target_model` (not applied when the proxy sent
    #: `x-gateway-model-name-rewrite`)
    rules: RoutingRules | None = None
    observer: StreamObserver = field(default_factory=NullObserver)
    #: which endpoints may be picked (the core's rule; with health: back-pressure and
    #: wrong-model answers Envoy reports, and the all-stale fallback when it is on)
    selector: CandidateSelector | None = None
    #: the pool for a model name no pool claims (the reference picker passes any model through
    #: to its one InferencePool); None answers 404 instead
    default_model: str | None = None
    #: measures the scheduling decision (wall time, for the scheduler latency metric)
    timer: Callable[[], float] = time.perf_counter
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _retry: RetryPolicy = field(default=RetryPolicy(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.selector is None:
            self.selector = CandidateSelector(self.router)
        # Envoy does the sending: no retries here, the plan's next endpoints are the fallbacks
        self._retry = RetryPolicy(max_attempts=1 + self.settings.fallbacks)

    def stream(self) -> "PickerStream":
        return PickerStream(self)

    def lifecycle(self) -> RequestLifecycle:
        """One request's lifecycle; Envoy does the sending, so no retries (the fallbacks in
        the destination header are the attempt plan's next endpoints)."""
        return RequestLifecycle(self.router, selector=self.selector, admission=self.admission,
                                rules=self.rules, retry=self._retry, timer=self.timer,
                                default_model=self.default_model)

    def next_request_id(self) -> str:
        return f"epp-{next(self._ids)}"


class PickerStream:
    """The state of one ext_proc stream (one HTTP request and its response): Envoy's messages
    translated into the events of one core `RequestLifecycle`, its actions into Envoy's."""

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
        self.lifecycle: RequestLifecycle | None = None
        self.destination: str = ""
        self.request_size = 0
        self.error: InferouteError | None = None
        self.received_at: float | None = None
        self.routed_at: float | None = None
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.status = 0
        self.response_bytes = 0
        self.usage: dict[str, Any] | None = None
        self.completed = False
        #: the admission ticket while flow control keeps the request waiting
        self.waiting: Any = None
        self._raw = b""
        self._trailers_follow = False
        #: the response is read for usage (not compressed), as an event stream or not
        self._read_usage = False
        self._sse = False
        #: a 404's verdict waits for its first body bytes (does it name the model?)
        self._judge_404 = False

    @property
    def request(self) -> InferenceRequest | None:
        return self.lifecycle.request if self.lifecycle is not None else None

    @property
    def decision(self) -> Decision | None:
        return self.lifecycle.decision if self.lifecycle is not None else None

    @property
    def schedule_seconds(self) -> float:
        return self.lifecycle.schedule_seconds if self.lifecycle is not None else 0.0

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
        """The body is complete: the lifecycle parses, routes, admits and schedules it."""
        self.routed = True
        self._trailers_follow = trailers_follow
        self._raw = bytes(self.body)
        self.body = bytearray()
        lc = self.lifecycle = self.picker.lifecycle()
        path = self.headers.get(":path", "").split("?", 1)[0]
        headers = {k: v for k, v in self.headers.items() if not k.startswith(":")}
        rid = headers.get("x-request-id") or self.picker.next_request_id()
        # another OpenAI-style path (embeddings, ...): None, routed on `model` alone
        api = API_PATHS.get(path.rstrip("/"))
        if refused := lc.parse(api, self._raw, headers, request_id=rid, now=now):
            return self._act(refused, now)
        request = lc.request
        assert request is not None
        if rewrite := headers.get(MODEL_REWRITE_HEADER):  # the proxy chose the model
            request.target_model = rewrite
        if headers.get(OBJECTIVE_HEADER):
            request.objective = headers[OBJECTIVE_HEADER]
        if headers.get(FAIRNESS_HEADER):
            request.fairness_id = headers[FAIRNESS_HEADER]
        hint = m.filter_metadata(req, SUBSET_NAMESPACE).get(SUBSET_KEY)
        allowed = None
        if hint is not None:
            allowed = frozenset(str(x) for x in hint) if isinstance(hint, list) \
                else frozenset({str(hint)})
        return self._act(lc.route(now, allowed=allowed), now)

    def resume(self, now: float) -> list[m.ProcessingResponse]:
        """Flow control released the waiting request: schedule it now."""
        self.waiting = None
        assert self.lifecycle is not None
        return self._act(self.lifecycle.released(now), now)

    def reject(self, err: InferouteError, now: float) -> list[m.ProcessingResponse]:
        """Flow control gave up on the waiting request (TTL, pool gone)."""
        self.waiting = None
        if self.lifecycle is not None:
            self.lifecycle.expired(err)
        return self._fail(err, now)

    def _act(self, actions: list[Action], now: float) -> list[m.ProcessingResponse]:
        """The lifecycle's answer to the request, in Envoy's messages."""
        first = actions[0]
        if isinstance(first, Wait):  # queued: the server waits, then resume() or reject()
            self.waiting = first.ticket
            return []
        if isinstance(first, Respond):
            return self._fail(first.error, now)
        assert isinstance(first, SendUpstream) and self.lifecycle is not None
        lc = self.lifecycle
        assert lc.plan is not None
        self.routed_at = now
        self.destination = ",".join(ep.name for ep in lc.plan.order)
        raw, body = self._raw, lc.body
        self._raw = b""
        self.request_size = len(body)
        self.picker.observer.routed(self, now)
        return self._routing_responses(body, rewritten=body is not raw,
                                       end_of_stream=not self._trailers_follow)

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
        router = self.picker.router
        eps = [ep for mp in router.pools.values() for ep in router.candidates(mp, now)]
        if not eps:
            raise NoEndpointAvailable("no ready endpoint")
        ep = min(eps, key=lambda e: e.in_flight_requests)
        self.destination = ep.name
        common = m.pb.CommonResponse(clear_route_cache=True,
                                     header_mutation=self._routing_headers(0, False))
        return m.headers_response(common, request=True, metadata=self._metadata())

    # -- response phase -----------------------------------------------------------------------

    def _live(self) -> RequestLifecycle | None:
        """The lifecycle while the routed request is in flight (None for a bodyless one)."""
        lc = self.lifecycle
        return lc if lc is not None and lc.phase in (Phase.SENDING, Phase.STREAMING) else None

    def _on_response_headers(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        headers = m.header_map(req.response_headers)
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        lc = self._live()
        if lc is not None:
            served = m.filter_metadata(req, DESTINATION_NAMESPACE).get(SERVED_KEY)
            if isinstance(served, str) and served:
                old = lc.served_by(served, now)  # Envoy's own retry used a fallback
                if old is not None:
                    self.picker.observer.moved(self, old, now)
            # a compressed body cannot be read for usage: pass it through untouched
            self._read_usage = "content-encoding" not in headers
            self._sse = "text/event-stream" in headers.get("content-type", "")
            if self.status == 404 and not req.response_headers.end_of_stream:
                self._judge_404 = True  # is it about the model? its body says
            else:
                lc.upstream_answered(now, self.status, retry_after=headers.get("retry-after"),
                                     final=True)
        out = [m.headers_response(request=False)]
        if req.response_headers.end_of_stream:
            self._finish(now, completed=True)
        return out

    def _on_response_body(self, req: m.ProcessingRequest, now: float) -> list[m.ProcessingResponse]:
        rb = req.response_body
        lc = self._live()
        if lc is not None and (rb.body or rb.end_of_stream):
            if self._judge_404:
                self._judge_404 = False
                lc.upstream_answered(now, self.status, head=rb.body, final=True)
            if self.first_byte_at is None and rb.body:
                self.first_byte_at = now
                lc.first_byte(now, stream=self._sse, plain=self._read_usage)
            if rb.body:
                lc.body_chunk(rb.body, relay=False)
        self.response_bytes += len(rb.body)
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
        self.completed = completed and 200 <= self.status < 400
        lc = self.lifecycle
        if lc is None:
            return
        live = self._live()
        if live is not None and self._judge_404:  # ended without a body to judge
            self._judge_404 = False
            live.upstream_answered(now, self.status, final=True)
        actions = (live.end(now) if completed and live is not None else lc.close(now))
        for action in actions:
            if isinstance(action, Finish):
                self.usage = action.usage
        if self.decision is not None:
            self.picker.observer.finished(self, now)
