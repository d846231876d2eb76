"""One request's life, sans-I/O: events in, actions out, in the manner of h11's `Connection`.

A shell creates a `RequestLifecycle` per request, feeds it what happens and carries out the
actions it returns; the lifecycle does no I/O and reads no clock (every event carries `now`;
the random source for back-off jitter and the optional scheduling timer are injected). The HTTP
gateway (`gateway/proxy.py`), the ext_proc picker (`extproc/protocol.py`) and the virtual
benchmark (`bench/des.py`) drive it. It owns, in order:

    parse    the body (an API path, or any other OpenAI-style path routed on `model` alone)
    route    model route (admission's routing rules; skipped when the model was already chosen:
             a semantic pick, the proxy's rewrite header) -> resolve the pool (the default
             pool for an unclaimed name, if any) -> alias rewrite (an alias names the pool's
             model upstream) -> the upstream body (target model, `include_usage` injected
             when usage must be known) and the response rewriter (the client's model name
             written back, the injected usage chunk hidden) -> admission (go / Wait / 429 / 503)
    schedule (at once, or on `released` after a Wait): candidates (`CandidateSelector`: the
             ready and live rule, back-pressure, the proxy's subset, the all-stale fallback)
             -> Router.schedule -> the attempt plan (`AttemptPlan`) -> SendUpstream
    upstream_failed / upstream_answered before anything reached the client: health told
             (failure, back-off, wrong model), then SendUpstream to the plan's next endpoint or
             Respond(error); `final=True` (the picker: Envoy already relays the answer) only
             tells health
    first_byte -> Router.first_token and the relay set up (`core/relay.py`); body_chunk ->
             Relay(what the client gets: whole SSE events, the client's model name written
             back, the injected usage chunk dropped), usage read once on the way
    end -> Relay(the rest), Finish(usage) and Router.finish; a failure once bytes reached the
             client -> Relay(an error event that ends the stream), or nothing for a plain body
             (the shell cuts the connection), and Finish; client_gone / close -> Finish, the
             queue slot or the endpoint released, exactly once

What stays in a shell is I/O by nature: reading bytes, connecting, timeouts, waiting on the
admission ticket, tenant key look-ups (their objective and fairness id are inputs of `route`),
semantic embeddings (a pick sets `request.target_model` between `parse` and `route`), writing
metrics and logs.

Actions: `Respond(error)` (answer the client with this error; the request is over), `Wait(ticket)`
(queued by admission: feed `released` when the ticket is released, `expired` when it fails),
`SendUpstream(endpoint, body, attempt, delay, last)` (send after `delay` seconds; `last`: its
answer is the client's), `Relay(data)`, `Finish(usage, error)`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import orjson

from .admission.flowcontrol import Ticket
from .admission.routing_rules import RoutingRules
from .admission.usage import ResponseRewriter, prepare_upstream_body
from .endpoint import Endpoint, Pool
from .errors import (
    BadRequest,
    InferouteError,
    ModelNotFound,
    NoEndpointAvailable,
    UpstreamError,
)
from .relay import ResponseRelay
from .request import ApiKind, InferenceRequest, decode_body, parse_request
from .retryplan import AttemptPlan, RetryPolicy, Verdict, judge, needs_head
from .router import Decision, ModelPool, Router
from .selection import CandidateSelector
from .sse import UsageTracker

__all__ = ["Action", "AdmissionControl", "Finish", "Phase", "Relay", "RequestLifecycle",
           "Respond", "RetryPolicy", "SendUpstream", "Wait"]


class AdmissionControl(Protocol):
    """What the lifecycle needs of admission (the core's `AdmissionController`)."""

    def classify(self, request: InferenceRequest, *, tenant_objective: str | None = None,
                 tenant_fairness_id: str | None = None) -> Any: ...

    def admit(self, request: InferenceRequest, pool: Pool, now: float) -> Any:
        """An `Admitted` (its `room_on`: the endpoints to keep to) or a `Ticket`."""

    def cancel(self, ticket: Ticket) -> bool: ...


@dataclass(frozen=True, slots=True)
class Respond:
    error: InferouteError


@dataclass(frozen=True, slots=True)
class Wait:
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class SendUpstream:
    endpoint: Endpoint
    body: bytes
    #: 1 for the first send, k for retry k - 1
    attempt: int
    #: seconds to wait before sending (a retry's back-off)
    delay: float = 0.0
    #: no retry follows this attempt: its answer, whatever it is, is the client's
    last: bool = True


@dataclass(slots=True)  # not frozen: one per relayed chunk, and a frozen __init__ costs ~1 us
class Relay:
    data: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    usage: dict[str, Any] | None
    error: InferouteError | None = None


Action = Respond | Wait | SendUpstream | Relay | Finish


class Phase(Enum):
    NEW = "new"
    PARSED = "parsed"            # parsed, not yet routed
    WAITING = "waiting"          # queued by admission
    SENDING = "sending"          # sent upstream, no answer accepted yet
    STREAMING = "streaming"      # the answer is being relayed
    DONE = "done"


class RequestLifecycle:
    """One request from its body to its end (see the module docstring)."""

    __slots__ = ("_allowed", "_last", "_parsed_body", "_raw", "_relay", "_told", "_tracker",
                 "admission", "attempt", "body", "decision", "default_model", "defer_hooks",
                 "inject_usage", "phase", "plan", "pool", "rename", "request", "retry",
                 "rewriter", "rng", "router", "rules", "schedule_seconds", "selector", "status",
                 "ticket", "timer")

    def __init__(self, router: Router, *, selector: CandidateSelector | None = None,
                 admission: AdmissionControl | None = None, rules: RoutingRules | None = None,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None,
                 defer_hooks: bool = False, default_model: str | None = None,
                 inject_usage: bool = False, timer: Callable[[], float] | None = None) -> None:
        self.router = router
        self.selector = selector or CandidateSelector(router)
        self.admission = admission
        self.rules = rules
        self.retry = retry or RetryPolicy()
        #: the back-off jitter (default: seeded on the first retry; seeding costs ~50 us)
        self.rng = rng
        self.defer_hooks = defer_hooks
        self.default_model = default_model
        self.inject_usage = inject_usage
        self.timer = timer
        self.phase = Phase.NEW
        self.request: InferenceRequest | None = None
        self.pool: ModelPool | None = None
        self.decision: Decision | None = None
        self.plan: AttemptPlan | None = None
        self.attempt = 0
        self.ticket: Ticket | None = None
        #: what goes upstream (target model, include_usage), set by `route`
        self.body = b""
        #: (target, client) model names to write back into the response (a route or alias)
        self.rename: tuple[str, str] | None = None
        #: filters the response for the client (rename, injected usage hidden), when needed
        self.rewriter: ResponseRewriter | None = None
        #: seconds the scheduling decision took (with a `timer`)
        self.schedule_seconds = 0.0
        #: the status of the accepted upstream answer
        self.status = 0
        self._raw: bytes | Mapping[str, Any] = b""
        self._parsed_body: Any = None
        self._allowed: frozenset[str] | None = None
        self._last = True
        self._tracker: UsageTracker | None = None
        self._relay: ResponseRelay | None = None
        #: Router.first_token was called for the accepted answer
        self._told = False

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the request is (or was last) sent."""
        return self.decision.endpoint if self.decision is not None else None

    @property
    def deadline(self) -> float | None:
        """Until when retries may start (None before scheduling)."""
        return self.plan.deadline if self.plan is not None else None

    # -- events: the request ------------------------------------------------------------------

    def receive(self, api: ApiKind | None, body: bytes | Mapping[str, Any],
                headers: Mapping[str, str] | None, *, request_id: str, now: float,
                token_ids: list[int] | None = None) -> list[Action]:
        """The request head and body arrived, nothing to add: `parse` then `route`."""
        return self.parse(api, body, headers, request_id=request_id, now=now,
                          token_ids=token_ids) or self.route(now)

    def parse(self, api: ApiKind | None, body: bytes | Mapping[str, Any],
              headers: Mapping[str, str] | None, *, request_id: str, now: float,
              token_ids: list[int] | None = None) -> list[Action]:
        """Parse the body (`headers` lower-case; `api` None: another OpenAI-style path, routed on
        `model` alone; `token_ids` when the shell tokenized the prompt for precise routing).
        Returns [] (then `route`, after whatever the shell adds) or [Respond]."""
        self._expect(Phase.NEW)
        try:
            if api is None:
                req = _model_only(body, headers, request_id, now)
            else:
                req = parse_request(api, body, headers, request_id=request_id,
                                    arrival_time=now)
        except InferouteError as exc:
            return self._respond(exc)
        req.token_ids = token_ids
        self.request = req
        self._raw = body
        self._parsed_body = req.body
        self.phase = Phase.PARSED
        return []

    def route(self, now: float, *, tenant_objective: str | None = None,
              tenant_fairness_id: str | None = None,
              allowed: frozenset[str] | None = None) -> list[Action]:
        """Model route, pool, alias, upstream body, admission; then schedule unless queued.
        `allowed`: the proxy's endpoint subset (names or hosts)."""
        self._expect(Phase.PARSED)
        req = self.request
        assert req is not None
        self._allowed = allowed
        prefer: frozenset[str] | None = None
        try:
            chosen = req.target_model != req.model  # a semantic pick, a rewrite header
            if self.rules is not None and not chosen:
                self.rules.route(req)  # a model route may pick another target model
            mp = self.pool = self._resolve(req)
            if req.target_model in mp.aliases:  # an alias names the pool's model upstream
                req.target_model = mp.model
            if req.target_model != req.model and not chosen:
                self.rename = (req.target_model, req.model)  # the client sees its own name
            self.body = self._upstream_body()
            if self.admission is not None:
                self.admission.classify(req, tenant_objective=tenant_objective,
                                        tenant_fairness_id=tenant_fairness_id)
                res = self.admission.admit(req, mp.pool, now)
                if isinstance(res, Ticket):
                    self.ticket = res
                    self.phase = Phase.WAITING
                    return [Wait(res)]
                # admitted on some endpoint's room: not sent to one known to be full
                prefer = getattr(res, "room_on", None)
        except InferouteError as exc:
            return self._respond(exc)
        return self._schedule(now, prefer)

    def released(self, now: float) -> list[Action]:
        """Admission released the queued request: schedule it now, off the endpoints the
        dispatch budget knew to be full (their last scrape may not show it yet)."""
        self._expect(Phase.WAITING)
        room_on = self.ticket.room_on if self.ticket is not None else None
        self.ticket = None
        return self._schedule(now, room_on)

    def expired(self, error: InferouteError) -> list[Action]:
        """Admission gave up on the queued request (its TTL passed, or shutdown)."""
        self._expect(Phase.WAITING)
        self.ticket = None
        return self._respond(error)

    # -- events: the upstream -----------------------------------------------------------------

    def needs_head(self, status: int) -> bool:
        """Whether the shell must read the first body bytes of an answer with `status` before
        `upstream_answered` (not for one dropped for a retry)."""
        return needs_head(status, self._last)

    def upstream_answered(self, now: float, status: int, *, retry_after: str | None = None,
                          head: bytes = b"", final: bool = False) -> list[Action]:
        """The upstream sent its status line (`retry_after`: its Retry-After header; `head`: the
        first body bytes, as `needs_head` says). [] means relay this answer (then `first_byte`
        when `head` is not empty); else a SendUpstream (drop the answer) or Respond + Finish.
        `final`: the shell cannot retry (the picker), health is told and the answer relayed."""
        self._expect(Phase.SENDING)
        req, mp, ep = self.request, self.pool, self.endpoint
        assert req is not None and mp is not None and ep is not None
        outcome = judge(status, last=self._last or final, retry_after=retry_after, head=head,
                        own_model=req.target_model == mp.model)
        health = self.selector.health
        if health is not None:
            if outcome.back_off is not None:
                health.back_off(mp.model, ep, outcome.back_off)
            if outcome.failed:
                health.record(mp.model, ep, False)
            if outcome.verdict is Verdict.WRONG_MODEL:
                health.not_serving(mp.model, ep)
        if outcome.verdict is Verdict.RELAY or final:
            self.status = status
            self.phase = Phase.STREAMING
            if head:
                self._first_token(now)
            return []
        if outcome.verdict is Verdict.WRONG_MODEL and self._last:
            # in the gateway's shape, as every later request gets it
            err = NoEndpointAvailable(f"no endpoint of pool '{mp.model}' can serve it: "
                                      f"{ep.name} answered 404 for model '{mp.model}'",
                                      code="model_not_served")
            return self._over(now, None, err, [Respond(err)])
        return self._retry(now, None)

    def upstream_failed(self, now: float, error: InferouteError | None = None, *,
                        retry: bool = True, relayed: bool = True) -> list[Action]:
        """The upstream failed (told to health): before its answer was accepted, or after it
        with nothing relayed to the client yet (`relayed=False`), a retry elsewhere may follow
        (unless `retry` is false: the request's own time ran out); once bytes reached the
        client, a stream ends with an error event (when this lifecycle relays) and Finish."""
        err = error or UpstreamError("model server failed")
        self._expect(Phase.SENDING, Phase.STREAMING)
        self._tell_health(False)
        if self.phase is Phase.SENDING or not relayed:
            if not retry:
                return self._over(now, None, err, [Respond(err)])
            return self._retry(now, err, anew=self.phase is Phase.STREAMING)
        ending = self._relay.fail(err) if self._relay is not None else None
        return self._over(now, None, err, [Relay(ending)] if ending else [])

    def first_byte(self, now: float, *, stream: bool = True, plain: bool = True,
                   keep_document: bool = False) -> list[Action]:
        """The answer's body begins (its prefill is over; accepts the answer when
        `upstream_answered` was not fed): `stream`, an event stream; `plain`, not
        content-encoded (else its bytes pass through unread and unchanged); `keep_document`,
        decode a plain JSON body at the end (`document`, for a cache)."""
        self._expect(Phase.SENDING, Phase.STREAMING)
        self.phase = Phase.STREAMING
        self._first_token(now)
        self._start_relay(stream, plain, keep_document)
        return []

    def body_chunk(self, data: bytes, *, relay: bool = True) -> list[Action]:
        """Response bytes: Relay(what the client gets now, if anything); `relay=False`: the
        shell relays them itself (the picker: Envoy does), only usage is read."""
        if self.phase is not Phase.STREAMING:  # the per-chunk path: `_expect` inlined
            self._expect(Phase.STREAMING)
        if self._relay is None:  # first_byte was not fed: an event stream, presumably
            self._start_relay(True, True, False)
        if self._tracker is not None:
            self._tracker.feed(data)
        if not relay:
            return []
        assert self._relay is not None
        out = self._relay.feed(data)
        return [Relay(out)] if out else []

    @property
    def document(self) -> dict[str, Any] | None:
        """The decoded JSON body after `end`, when `first_byte` was asked to keep it."""
        return self._tracker.document if self._tracker is not None else None

    def end(self, now: float, usage: dict[str, Any] | None = None, *,
            record: bool = True) -> list[Action]:
        """The response ended (an empty one may end before any byte); `usage` when the shell
        knows it, else it is read from the relayed bytes; `record`: tell health the outcome
        (a success unless the answer was a 5xx)."""
        self._expect(Phase.SENDING, Phase.STREAMING)
        rest = self._relay.finish() if self._relay is not None else b""
        out: list[Action] = [Relay(rest)] if rest else []
        if usage is None and self._tracker is not None:
            usage = self._tracker.finish()
        if record and self.status < 500:
            self._tell_health(True)
            self._answered(now)
        return self._over(now, usage, None, out)

    def client_gone(self, now: float) -> list[Action]:
        """The client went away: leave the queue, or release the endpoint."""
        return self.close(now, InferouteError("client went away", code="client_gone"))

    def close(self, now: float, error: InferouteError | None = None) -> list[Action]:
        """The shell is done with the request, however it ended; idempotent."""
        if self.phase is Phase.DONE:
            return []
        if self.phase is Phase.WAITING and self.ticket is not None and self.admission:
            self.admission.cancel(self.ticket)
            self.ticket = None
        usage = self._tracker.finish() if self._tracker is not None else None
        return self._over(now, usage, error, [])

    def served_by(self, name: str, now: float) -> Endpoint | None:
        """The proxy reports it served the request from `name` (a fallback after its own
        retry): the bookkeeping moves there; returns the endpoint left, if it moved."""
        decision = self.decision
        if decision is None or decision.endpoint is None or decision.endpoint.name == name:
            return None
        ep = decision.pool.pool.get(name)
        if ep is None:
            return None
        old = decision.endpoint
        self.router.dispatch(decision, ep, now)
        return old

    # -- steps ------------------------------------------------------------------------------

    def _resolve(self, req: InferenceRequest) -> ModelPool:
        try:
            return self.router.resolve(req)
        except ModelNotFound:
            default = self.default_model
            if default is None or default not in self.router.pools:
                raise
            return self.router.pools[default]

    def _schedule(self, now: float, prefer: frozenset[str] | None = None) -> list[Action]:
        req, mp = self.request, self.pool
        assert req is not None and mp is not None
        timer = self.timer
        t0 = timer() if timer is not None else 0.0
        try:
            candidates = self.selector.select(mp, now, self._allowed, prefer=prefer)
            self.decision = self.router.schedule(req, now, candidates, pool=mp,
                                                 defer_hooks=self.defer_hooks)
        except InferouteError as exc:
            return self._respond(exc)
        if timer is not None:
            self.schedule_seconds = timer() - t0
        if self.retry.max_attempts == 1:  # no retries: the rest of the plan is not needed
            self.plan = AttemptPlan([self.decision.result.target], self.retry, now)
        else:
            self.plan = AttemptPlan.build(self.decision.result.targets, candidates,
                                          self.selector.every_ready(mp, now), self.retry, now,
                                          self.selector.demoted(mp.model))
        return [self._send(now)]

    def _retry(self, now: float, err: InferouteError | None, *, anew: bool = False
               ) -> list[Action]:
        """The next attempt, if the plan has one: after a failed attempt unless it was the
        last; after an answer that failed while relayed (`anew`) if the deadline allows."""
        plan = self.plan
        assert plan is not None
        if plan.has_next(now) if anew else not self._last:
            return [self._send(now)]
        error = err or NoEndpointAvailable("no endpoint could be tried")
        return self._over(now, None, error, [Respond(error)])

    def _send(self, now: float) -> SendUpstream:
        assert self.decision is not None and self.plan is not None
        if self.rng is None and self.attempt:  # a retry: its back-off needs the jitter
            self.rng = random.Random(0)
        ep, delay, self._last = self.plan.take(now, self.rng)
        self.attempt += 1
        self.phase = Phase.SENDING
        self._tracker = self._relay = None
        self._told = False
        self.router.dispatch(self.decision, ep, now + delay)
        return SendUpstream(ep, self.body, self.attempt, delay, self._last)

    def _upstream_body(self) -> bytes:
        req = self.request
        assert req is not None
        raw = self._raw
        changed = req.body is not self._parsed_body  # e.g. a semantic guard edited it
        if not (self.inject_usage or changed or req.target_model != req.model):
            return raw if isinstance(raw, bytes) else orjson.dumps(dict(raw))
        up = prepare_upstream_body(req.body, api=req.api, target_model=req.target_model,
                                   inject_usage=self.inject_usage)
        if self.rename is not None or up.injected:
            target, client = self.rename or (None, None)
            self.rewriter = ResponseRewriter(strip_usage=up.injected, target_model=target,
                                             client_model=client)
        return up.body

    def _first_token(self, now: float) -> None:
        if not self._told:
            assert self.decision is not None
            self._told = True
            self.router.first_token(self.decision, now)
            self._answered(now)

    def _answered(self, now: float) -> None:
        """The endpoint is seen answering (the candidate rule's proof of life)."""
        ep = self.endpoint
        if ep is not None:
            ep.answered_at = now

    def _start_relay(self, stream: bool, plain: bool, keep_document: bool) -> None:
        if plain:
            self._relay = ResponseRelay(stream, self.rewriter, self.rename)
            self._tracker = UsageTracker(stream, self._relay.rewriter)
            if keep_document and not stream:
                self._tracker.keep_document()
        else:  # content-encoded: passed on as it comes, nothing read
            self._relay, self._tracker = ResponseRelay(False), None

    def _tell_health(self, ok: bool) -> None:
        health, mp, ep = self.selector.health, self.pool, self.endpoint
        if health is not None and mp is not None and ep is not None:
            health.record(mp.model, ep, ok)

    def _respond(self, error: InferouteError) -> list[Action]:
        self.phase = Phase.DONE
        return [Respond(error)]

    def _over(self, now: float, usage: dict[str, Any] | None, error: InferouteError | None,
              out: list[Action]) -> list[Action]:
        self.phase = Phase.DONE
        if self.decision is not None:
            self.router.finish(self.decision, now, usage)
        return [*out, Finish(usage, error)]

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise RuntimeError(f"event not allowed in phase {self.phase.value}")


def _model_only(body: bytes | Mapping[str, Any], headers: Mapping[str, str] | None,
                request_id: str, now: float) -> InferenceRequest:
    """A request on another OpenAI-style path (embeddings, ...): routed on `model` alone."""
    raw = body if isinstance(body, bytes) else orjson.dumps(dict(body))
    doc = decode_body(raw)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    return InferenceRequest(request_id=request_id, api="completions", model=model, body=doc,
                            headers=dict(headers or {}), prefix_text="", arrival_time=now,
                            body_size=len(raw))
