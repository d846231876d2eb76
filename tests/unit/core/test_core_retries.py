"""The lifecycle's retry, back-pressure, wrong-model and all-stale rules (no sockets; the clock
and the jitter injected)."""

from __future__ import annotations

import random

import orjson
import pytest

from inferoute.core.candidates import CandidateRule
from inferoute.core.endpoint import EndpointMetrics, Pool
from inferoute.core.errors import UpstreamTimeout
from inferoute.core.lifecycle import (
    Finish,
    Phase,
    RequestLifecycle,
    Respond,
    SendUpstream,
)
from inferoute.core.retryplan import (
    AttemptPlan,
    RetryPolicy,
    Verdict,
    judge,
    retry_after_seconds,
    retry_delay,
)
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.core.selection import CandidateSelector, PoolsHealth

BODY = orjson.dumps({"model": "m", "prompt": "hello there"})
WRONG_MODEL = b'{"error": {"message": "The model `m` does not exist.", "code": 404}}'


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def router(make_ep) -> Router:
    eps = [make_ep(i, scraped_at=100.0) for i in range(3)]
    return Router([ModelPool("m", Pool("m", eps), Scheduler(seed=1))],
                  CandidateRule(ready_window=5.0))


def flight(router: Router) -> int:
    return sum(ep.in_flight_requests for ep in router.pools["m"].pool)


def start(router: Router, selector: CandidateSelector, now: float = 100.0,
          **kw) -> tuple[RequestLifecycle, SendUpstream]:
    lc = RequestLifecycle(router, selector=selector, rng=random.Random(3), **kw)
    (send,) = lc.receive("completions", BODY, {}, request_id="r", now=now)
    assert isinstance(send, SendUpstream)
    return lc, send


def test_every_endpoint_is_tried_once_with_jittered_back_off(router) -> None:
    lc, first = start(router, CandidateSelector(router),
                      retry=RetryPolicy(backoff=0.1, backoff_max=0.15))
    assert first.delay == 0.0 and not first.last
    seen = [first.endpoint]
    second, = lc.upstream_failed(100.1)
    third, = lc.upstream_failed(100.2)
    seen += [second.endpoint, third.endpoint]
    assert len(set(map(id, seen))) == 3 and third.last
    assert 0 <= second.delay <= 0.1 and 0 <= third.delay <= 0.15  # capped by backoff_max
    assert flight(router) == 1  # each retry moved the request
    respond, finish = lc.upstream_failed(100.3, UpstreamTimeout("late"))
    assert isinstance(respond, Respond) and respond.error.status == 504
    assert isinstance(finish, Finish) and flight(router) == 0


def test_the_deadline_makes_an_attempt_the_last(router) -> None:
    lc, first = start(router, CandidateSelector(router),
                      retry=RetryPolicy(backoff=0.0, request_timeout=1.0))
    assert lc.deadline == 101.0 and not first.last
    second, = lc.upstream_failed(101.5)  # a failed attempt is retried, but this one is last
    assert second.last
    respond, _ = lc.upstream_failed(101.6)
    assert isinstance(respond, Respond) and respond.error.status == 502


def test_a_timeout_of_the_requests_own_time_is_not_retried(router) -> None:
    lc, _ = start(router, CandidateSelector(router))
    respond, _ = lc.upstream_failed(100.1, UpstreamTimeout("total"), retry=False)
    assert respond.error.status == 504 and flight(router) == 0


def test_back_pressure_skips_the_replica_for_its_retry_after(router, clock) -> None:
    health = PoolsHealth(router, clock)
    sel = CandidateSelector(router, health)
    lc, first = start(router, sel)
    (retry,) = lc.upstream_answered(100.0, 429, retry_after="7")
    assert isinstance(retry, SendUpstream) and retry.endpoint is not first.endpoint
    assert health.backing_off("m", first.endpoint)
    assert health.failure_streak("m", first.endpoint) == 0  # not a failure
    assert lc.upstream_answered(100.0, 200, head=b"{}") == [] and lc.phase is Phase.STREAMING
    lc.end(100.1)
    for i in range(6):  # while it backs off, nothing is sent there
        other, send = start(router, sel)
        assert send.endpoint is not first.endpoint
        other.end(100.2)
    clock.t = 107.5
    assert not health.backing_off("m", first.endpoint)
    assert retry_after_seconds("1e9") == 30.0 and retry_after_seconds(None) == 1.0
    assert retry_after_seconds("nan") == 1.0


def test_the_last_attempts_back_pressure_is_relayed(router, clock) -> None:
    lc, _ = start(router, CandidateSelector(router, PoolsHealth(router, clock)),
                  retry=RetryPolicy(max_attempts=1))
    assert lc.upstream_answered(100.0, 503, retry_after="2") == []
    assert lc.status == 503


def test_a_404_for_the_pools_model_takes_the_replica_out(router, clock) -> None:
    health = PoolsHealth(router, clock)
    lc, first = start(router, CandidateSelector(router, health))
    assert lc.needs_head(404) and not lc.needs_head(500)
    (retry,) = lc.upstream_answered(100.0, 404, head=WRONG_MODEL)
    assert isinstance(retry, SendUpstream) and health.backing_off("m", first.endpoint)
    # a 404 that is not about the model (a missing route) is the client's answer
    assert lc.upstream_answered(100.0, 404, head=b"404: Not Found") == []
    one, _ = start(router, CandidateSelector(router, health),
                   retry=RetryPolicy(max_attempts=1))
    respond, finish = one.upstream_answered(100.0, 404, head=WRONG_MODEL)
    assert respond.error.status == 503 and respond.error.code == "model_not_served"
    assert finish.error is respond.error


def test_failing_and_backing_off_endpoints_are_tried_last(make_ep) -> None:
    a, b, c, d = (make_ep(i) for i in range(4))
    plan = AttemptPlan.build([a], [b, c], [a, b, c, d], RetryPolicy(), 0.0,
                             demoted=lambda ep: ep is b)
    assert plan.order == [a, c, d, b]
    first = AttemptPlan.build([b], [a], [], RetryPolicy(), 0.0, demoted=lambda ep: ep is b)
    assert first.order == [b, a]  # the decision's own target still goes first


def test_a_failure_before_anything_was_relayed_is_retried(router) -> None:
    lc, first = start(router, CandidateSelector(router))
    assert lc.upstream_answered(100.0, 200, head=b"data: {") == []
    (retry,) = lc.upstream_failed(100.1, relayed=False)
    assert isinstance(retry, SendUpstream) and retry.endpoint is not first.endpoint
    assert lc.upstream_answered(100.2, 200, head=b"{}") == []
    (finish,) = lc.upstream_failed(100.3)  # relayed: over
    assert finish.error is not None and flight(router) == 0


def test_every_scrape_stale_routes_on_in_flight_counts(router) -> None:
    events: list[tuple[str, str]] = []
    sel = CandidateSelector(router, stale_fallback=True,
                            on_stale=lambda pool, ev: events.append((pool, ev)))
    eps = list(router.pools["m"].pool)
    eps[0].in_flight_requests = 2
    lc, send = start(router, sel, now=110.0)  # every scrape is 10 s old: none is ready
    assert send.endpoint is not eps[0]
    assert events == [("m", "start"), ("m", "routed")]
    start(router, sel, now=110.0)
    assert events[-1] == ("m", "routed") and len(events) == 3
    for ep in eps:
        ep.metrics = EndpointMetrics(scraped_at=110.0)
    start(router, sel, now=110.0)
    assert events[-1] == ("m", "end")
    without = CandidateSelector(router)
    for ep in eps:
        ep.metrics = EndpointMetrics(scraped_at=100.0)
    lc = RequestLifecycle(router, selector=without)
    (respond,) = lc.receive("completions", BODY, {}, request_id="x", now=110.0)
    assert isinstance(respond, Respond) and respond.error.status == 503


def test_the_picker_reports_answers_it_cannot_retry(router, clock) -> None:
    health = PoolsHealth(router, clock)
    lc, first = start(router, CandidateSelector(router, health))
    assert lc.upstream_answered(100.0, 503, retry_after="3", final=True) == []
    assert health.backing_off("m", first.endpoint)
    lc.first_byte(100.05, stream=False)
    lc.body_chunk(b'{"usage": {"total_tokens": 3}}')
    (finish,) = lc.end(100.1)
    assert finish.usage == {"total_tokens": 3}


def test_judge_and_delay_rules() -> None:
    assert judge(500, last=False, own_model=True).verdict is Verdict.RETRY
    assert judge(500, last=True, own_model=True).failed is True
    assert judge(503, last=False, own_model=True).failed is None  # back-pressure
    assert judge(429, last=False, own_model=True, retry_after="4").back_off == 4.0
    assert judge(404, last=False, own_model=False, head=WRONG_MODEL).verdict is Verdict.RELAY
    assert judge(400, last=False, own_model=True).verdict is Verdict.RELAY
    assert retry_delay(0, 1.0, 1.0) == 0.0 and retry_delay(3, 0.0, 1.0) == 0.0
    assert retry_delay(3, 0.1, 1.0, lambda: 0.5) == pytest.approx(0.2)
