"""One request's life, sans-I/O: events in, actions out, in the manner of h11's `Connection`.

A shell creates a `RequestLifecycle` per request, feeds it what happens and carries out the
actions it returns; the lifecycle never does I/O and never reads a clock (every event carries
`now`). It owns, in order:

    receive: parse -> model route (admission's routing rules) -> resolve the pool (an alias
             names the pool's model upstream) -> admission (go / Wait / 429 / 503)
    released (after a Wait): candidates (the router's ready and fresh rule) -> Router.schedule
             -> Router.dispatch -> SendUpstream(target)
    upstream_failed before the first byte: retry on the decision's next target (RetryPolicy)
             or Respond(error); after it: Relay(an SSE error event) for a stream, then Finish
    first_byte -> Router.first_token; body_chunk -> Relay(whole SSE events), usage read once
    end -> Finish(usage) and Router.finish; client_gone -> Finish, the queue slot or the
             endpoint released

Actions: `Respond(error)` (answer the client with this error; the request is over), `Wait(ticket)`
(queued by admission: feed `released` when the ticket is released, `expired` when it fails),
`SendUpstream(endpoint, body, attempt, delay)` (send after `delay` seconds), `Relay(data)`,
`Finish(usage, error)`. Driven by the virtual benchmark (`bench/des.py`); the gateway and the
picker do not drive it yet.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

import orjson

from .admission.controller import AdmissionController
from .admission.flowcontrol import Ticket
from .admission.routing_rules import RoutingRules
from .endpoint import Endpoint
from .errors import InferouteError, UpstreamError
from .request import ApiKind, InferenceRequest, parse_request
from .router import Decision, Router
from .sse import UsageTracker, error_event, split_events

__all__ = ["Finish", "Phase", "Relay", "RequestLifecycle", "Respond", "RetryPolicy",
           "SendUpstream", "Wait"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Where and when a request that failed before its first byte is tried again: on the
    decision's next target (the picker's fallbacks), at most `max_attempts` sends in all, after
    a jittered exponential back-off: uniform(0, min(backoff_max, backoff * 2^(k-1))) before
    retry k."""

    max_attempts: int = 3
    backoff: float = 0.025
    backoff_max: float = 0.25

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.random() * min(self.backoff_max, self.backoff * 2 ** (retry - 1))


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


@dataclass(frozen=True, slots=True)
class Relay:
    data: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    usage: dict[str, Any] | None
    error: InferouteError | None = None


Action = Union[Respond, Wait, SendUpstream, Relay, Finish]


class Phase(Enum):
    NEW = "new"
    WAITING = "waiting"          # queued by admission
    SENDING = "sending"          # sent upstream, no byte back yet
    STREAMING = "streaming"      # the response is being relayed
    DONE = "done"


class RequestLifecycle:
    """One request from its body to its end (see the module docstring)."""

    def __init__(self, router: Router, *, admission: AdmissionController | None = None,
                 rules: RoutingRules | None = None, retry: RetryPolicy | None = None,
                 rng: random.Random | None = None, defer_hooks: bool = False) -> None:
        self.router = router
        self.admission = admission
        self.rules = rules
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random(0)
        self.defer_hooks = defer_hooks
        self.phase = Phase.NEW
        self.request: InferenceRequest | None = None
        self.decision: Decision | None = None
        self.attempt = 0
        self.ticket: Ticket | None = None
        self._body = b""
        self._tracker: UsageTracker | None = None
        self._held = b""

    # -- events -----------------------------------------------------------------------------

    def receive(self, api: ApiKind, body: bytes | Mapping[str, Any],
                headers: Mapping[str, str] | None, *, request_id: str, now: float,
                token_ids: list[int] | None = None) -> list[Action]:
        """The request head and body arrived (`headers` lower-case; `token_ids` when the shell
        tokenized the prompt for precise routing)."""
        self._expect(Phase.NEW)
        try:
            req = parse_request(api, body, headers, request_id=request_id, arrival_time=now)
            req.token_ids = token_ids
            self.request = req
            if self.rules is not None:
                self.rules.route(req)  # a model route may pick another target model
            mp = self.router.resolve(req)
            if req.target_model in mp.aliases:  # an alias names the pool's model upstream
                req.target_model = mp.model
            if self.admission is not None:
                self.admission.classify(req)
                res = self.admission.admit(req, mp.pool, now)
                if isinstance(res, Ticket):
                    self.ticket = res
                    self.phase = Phase.WAITING
                    return [Wait(res)]
        except InferouteError as exc:
            return self._respond(exc)
        self._body = self._upstream_body(body)
        return self._schedule(now)

    def released(self, now: float) -> list[Action]:
        """Admission released the queued request: schedule it now."""
        self._expect(Phase.WAITING)
        self.ticket = None
        return self._schedule(now)

    def expired(self, error: InferouteError) -> list[Action]:
        """Admission gave up on the queued request (its TTL passed, or shutdown)."""
        self._expect(Phase.WAITING)
        self.ticket = None
        return self._respond(error)

    def upstream_failed(self, now: float, error: InferouteError | None = None) -> list[Action]:
        """The upstream failed: to connect or before its first byte (then a retry elsewhere may
        follow), or mid-response."""
        err = error or UpstreamError("model server failed")
        if self.phase is Phase.SENDING:
            assert self.decision is not None
            targets = self.decision.result.targets
            if self.attempt < min(self.retry.max_attempts, len(targets)):
                return [self._send(targets[self.attempt], now,
                                   self.retry.delay(self.attempt, self.rng))]
            return self._over(now, None, err, [Respond(err)])
        self._expect(Phase.STREAMING)
        out: list[Action] = []
        if self._tracker is not None and self._tracker.stream:  # end the stream cleanly
            out.append(Relay(error_event(err.to_dict())))
        return self._over(now, None, err, out)

    def first_byte(self, now: float, *, stream: bool = True) -> list[Action]:
        """The first response bytes came back (its prefill is over); `stream`: an event stream."""
        self._expect(Phase.SENDING)
        assert self.decision is not None
        self.phase = Phase.STREAMING
        self._tracker = UsageTracker(stream)
        self.router.first_token(self.decision, now)
        return []

    def body_chunk(self, data: bytes) -> list[Action]:
        """Response bytes: relayed in whole events (a failure can always end them cleanly)."""
        self._expect(Phase.STREAMING)
        assert self._tracker is not None
        self._tracker.feed(data)
        if not self._tracker.stream:
            return [Relay(data)]
        out, self._held = split_events(self._held + data if self._held else data)
        return [Relay(out)] if out else []

    def end(self, now: float, usage: dict[str, Any] | None = None) -> list[Action]:
        """The response ended (an empty one may end before any byte); `usage` when the shell
        knows it without the body, else it is read from the relayed bytes."""
        self._expect(Phase.SENDING, Phase.STREAMING)
        out: list[Action] = [Relay(self._held)] if self._held else []
        self._held = b""
        if usage is None and self._tracker is not None:
            usage = self._tracker.finish()
        return self._over(now, usage, None, out)

    def client_gone(self, now: float) -> list[Action]:
        """The client went away: leave the queue, or release the endpoint."""
        if self.phase is Phase.DONE:
            return []
        if self.phase is Phase.WAITING and self.ticket is not None and self.admission:
            self.admission.cancel(self.ticket)
            self.ticket = None
        return self._over(now, None, InferouteError("client went away", code="client_gone"), [])

    # -- steps ------------------------------------------------------------------------------

    def _schedule(self, now: float) -> list[Action]:
        req = self.request
        assert req is not None
        try:
            self.decision = self.router.schedule(req, now, defer_hooks=self.defer_hooks)
        except InferouteError as exc:
            return self._respond(exc)
        return [self._send(self.decision.result.target, now, 0.0)]

    def _send(self, endpoint: Endpoint, now: float, delay: float) -> SendUpstream:
        assert self.decision is not None
        self.attempt += 1
        self.phase = Phase.SENDING
        self.router.dispatch(self.decision, endpoint, now)
        return SendUpstream(endpoint, self._body, self.attempt, delay)

    def _upstream_body(self, body: bytes | Mapping[str, Any]) -> bytes:
        req = self.request
        assert req is not None
        if req.target_model != req.model:
            return orjson.dumps({**req.body, "model": req.target_model})
        return body if isinstance(body, bytes) else orjson.dumps(dict(body))

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
