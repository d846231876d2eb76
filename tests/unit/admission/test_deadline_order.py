"""Deadlines in the flow-control queue: within a band and flow a request with a TTFT target
(`x-slo-ttft-ms`) is released earliest deadline first; one without keeps its arrival order and
is overtaken only by requests due before its own deadline (its TTL, or
`deadlineWithoutTarget`); a sheddable request still queued at its TTFT deadline gets 429
`slo_unattainable`, a non-sheddable one waits on; a released request's target, for the
scheduler, is what its wait left of it. Core only: injected times, no sockets."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from inferoute.core.admission import (OBJECTIVE_HEADER, AdmissionController, FlowControlSpec,
                                      Objectives, ObjectiveSpec, SaturationDetector, Ticket,
                                      TicketState)
from inferoute.core.admission.flowcontrol import FlowQueue
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.errors import BadRequest, TooManyRequests
from inferoute.core.request import InferenceRequest
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.config import SaturationSpec, parse_config
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.core.slo import TTFT_HEADER, note_wait, slo_targets

Req = Callable[..., InferenceRequest]


def _ctl(**flow: object) -> AdmissionController:
    # metrics stay fresh between the scrapes a test sets (a stale pool is saturated, and a
    # saturated pool sheds its sheddable requests whatever their deadlines)
    return AdmissionController(
        SaturationDetector(SaturationSpec(metrics_staleness_threshold=1000.0)),
        objectives=Objectives([ObjectiveSpec(name="batch", priority=-1)]),
        flow=FlowControlSpec(**flow))


def _saturated(ep: Callable[..., Endpoint]) -> tuple[Endpoint, Pool]:
    e = ep(waiting=9, scraped_at=0.0)  # over queueDepthThreshold 5: arrivals queue
    return e, Pool("m", [e])


def _spent(ep: Callable[..., Endpoint], req: Req) -> tuple[AdmissionController, Endpoint,
                                                            Pool]:
    """A pool not saturated whose dispatch budget one arrival spends: later arrivals queue,
    sheddable ones too."""
    ctl = _ctl()
    e = ep(waiting=5, scraped_at=0.0)  # room for 5 - 5 + 1 = 1
    pool = Pool("m", [e])
    r = req()
    ctl.classify(r)
    assert not isinstance(ctl.admit(r, pool, 0.0), Ticket)
    return ctl, e, pool


def _free(e: Endpoint, now: float, waiting: int = 0) -> None:
    """A fresh scrape with room for 5 - waiting + 1 releases."""
    e.metrics = EndpointMetrics(waiting=waiting, scraped_at=now)


def _queue(ctl: AdmissionController, pool: Pool, req: Req, now: float, name: str,
           ttft_ms: float | None = None, objective: str | None = None) -> Ticket:
    headers = {} if ttft_ms is None else {TTFT_HEADER: str(ttft_ms)}
    if objective:
        headers[OBJECTIVE_HEADER] = objective
    r = req(request_id=name, headers=headers)
    ctl.classify(r)
    t = ctl.admit(r, pool, now)
    assert isinstance(t, Ticket)
    return t


def _names(tickets: list[Ticket]) -> list[str]:
    return [t.request.request_id for t in tickets]


def test_a_late_tight_target_overtakes_earlier_arrivals(ep, req: Req) -> None:
    """Fails on arrival order: the targeted request came last."""
    ctl = _ctl()
    e, pool = _saturated(ep)
    for i in range(3):
        _queue(ctl, pool, req, 0.1 * i, f"plain{i}")
    _queue(ctl, pool, req, 0.5, "loose", ttft_ms=5000)
    _queue(ctl, pool, req, 0.6, "tight", ttft_ms=800)
    _free(e, 1.0, waiting=5)  # room for one release at a time
    order = []
    for k in range(5):
        (t,) = ctl.dispatchable(1.0 + k)
        order.append(t.request.request_id)
        _free(e, 1.0 + k + 1e-3, waiting=5)
    assert order == ["tight", "loose", "plain0", "plain1", "plain2"]


def test_fcfs_keeps_arrival_order(ep, req: Req) -> None:
    ctl = _ctl(ordering="fcfs")
    e, pool = _saturated(ep)
    _queue(ctl, pool, req, 0.0, "plain")
    _queue(ctl, pool, req, 0.5, "tight", ttft_ms=800)
    _free(e, 1.0)
    assert _names(ctl.dispatchable(1.0)) == ["plain", "tight"]


def test_untargeted_requests_are_overtaken_only_by_earlier_deadlines(ep, req: Req) -> None:
    """With deadlineWithoutTarget 2 s, a request without a target arriving at 0 is due at 2 s:
    a 1-s target arriving at 0.5 s goes first (due 1.5 s), one arriving at 1.5 s does not
    (due 2.5 s): the untargeted request waits for newcomers at most 2 s."""
    ctl = _ctl(deadline_without_target=2.0)
    e, pool = _saturated(ep)
    _queue(ctl, pool, req, 0.0, "plain0")
    _queue(ctl, pool, req, 0.1, "plain1")
    _queue(ctl, pool, req, 0.5, "early-tight", ttft_ms=1000)
    _queue(ctl, pool, req, 1.5, "late-tight", ttft_ms=1000)
    _free(e, 1.6)
    assert _names(ctl.dispatchable(1.6)) == ["early-tight", "plain0", "plain1", "late-tight"]


def test_default_deadline_without_target_is_the_ttl(ep, req: Req) -> None:
    ctl = _ctl(ttl=30.0)
    e, pool = _saturated(ep)
    plain = _queue(ctl, pool, req, 0.0, "plain")
    late = _queue(ctl, pool, req, 25.0, "late-tight", ttft_ms=4000)  # due 29 s < 30 s
    later = _queue(ctl, pool, req, 27.0, "later-tight", ttft_ms=4000)  # due 31 s
    assert (plain.due, late.due, later.due) == (30.0, 29.0, 31.0)
    _free(e, 27.5)
    assert _names(ctl.dispatchable(27.5)) == ["late-tight", "plain", "later-tight"]


def test_a_sheddable_request_past_its_target_gets_slo_unattainable(ep, req: Req) -> None:
    ctl, e, pool = _spent(ep, req)
    shed = _queue(ctl, pool, req, 0.0, "batch-tight", ttft_ms=500, objective="batch")
    kept = _queue(ctl, pool, req, 0.0, "standard-tight", ttft_ms=500)
    loose = _queue(ctl, pool, req, 0.0, "batch-loose", ttft_ms=20_000, objective="batch")
    assert ctl.next_deadline() == 0.5  # the shell's timer fires at the target
    assert ctl.expire(0.49) == []
    ((t, err),) = ctl.expire(0.5)
    assert t is shed and t.state is TicketState.EXPIRED
    assert isinstance(err, TooManyRequests) and err.status == 429
    body = err.to_dict()["error"]
    assert body["code"] == "slo_unattainable" and body["type"] == "rate_limit_error"
    assert "Retry-After" in err.headers
    # the non-sheddable one is past its target too, but is never shed for it
    assert ctl.expire(10.0) == [] and kept.state is TicketState.QUEUED
    _free(e, 10.0)
    assert _names(ctl.dispatchable(10.0)) == ["standard-tight", "batch-loose"]
    assert loose.state is TicketState.DISPATCHED


def test_shed_late_off_sends_late(ep, req: Req) -> None:
    ctl, e, pool = _spent(ep, req)
    ctl.flow = FlowControlSpec(shed_late=False)
    t = _queue(ctl, pool, req, 0.0, "batch-tight", ttft_ms=500, objective="batch")
    assert ctl.expire(5.0) == []
    _free(e, 5.0)
    assert ctl.dispatchable(5.0) == [t]


def test_ttl_still_bounds_a_loose_sheddable_target(ep, req: Req) -> None:
    ctl, _, pool = _spent(ep, req)
    ctl.flow = FlowControlSpec(ttl=2.0)
    _queue(ctl, pool, req, 0.0, "batch-loose", ttft_ms=60_000, objective="batch")
    ((_, err),) = ctl.expire(2.0)
    assert err.to_dict()["error"]["code"] == "queue_timeout"


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "nan", "inf", ""])
def test_a_malformed_target_is_a_400(ep, req: Req, bad: str) -> None:
    ctl = _ctl()
    _, pool = _saturated(ep)
    r = req(headers={TTFT_HEADER: bad})
    ctl.classify(r)
    with pytest.raises(BadRequest) as info:
        ctl.admit(r, pool, 0.0)
    assert info.value.status == 400 and info.value.to_dict()["error"]["param"] == TTFT_HEADER
    assert ctl.queued() == 0


def test_edf_pops_in_deadline_order_across_thousands() -> None:
    """The heap against a sort, with cancellations in between (lazy deletion)."""
    rng = random.Random(7)
    q = FlowQueue(ordering="edf", max_requests=10_000)
    tickets = []
    for i in range(5000):
        now = i * 0.01
        due = now + rng.choice([0.2, 1.0, 30.0])
        t = Ticket(request=i, pool="m", priority=0, flow="f", size=1, enqueued_at=now,
                   deadline=now + 30.0, due=due)
        q.push(t)
        tickets.append(t)
    for t in rng.sample(tickets, 1500):
        q.cancel(t)
    live = sorted((t for t in tickets if t.state is TicketState.QUEUED),
                  key=lambda t: (t.due, t.seq))
    popped = []
    while (t := q.pop()) is not None:
        popped.append(t)
    assert popped == live and len(popped) == 3500


def test_a_release_rule_sees_the_band_in_deadline_order(ep, req: Req) -> None:
    class First:
        active = True

        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def place(self, request, candidates, now):  # type: ignore[no-untyped-def]
            return None

        def choose(self, waiting, candidates, now):  # type: ignore[no-untyped-def]
            self.seen.append([r.request_id for r in waiting])
            return 0 if len(self.seen) == 1 else None

    rule = First()
    ctl = AdmissionController(release=rule)
    pool = Pool("m", [ep(0, scraped_at=0.0)])
    _queue(ctl, pool, req, 0.0, "plain")
    _queue(ctl, pool, req, 0.2, "tight", ttft_ms=300)
    assert _names(ctl.dispatchable(0.3)) == ["tight"]
    assert rule.seen[0] == ["tight", "plain"]


def test_a_released_request_carries_its_wait_and_the_target_left(ep, req: Req) -> None:
    ctl = _ctl()
    e, pool = _saturated(ep)
    t = _queue(ctl, pool, req, 0.0, "tight", ttft_ms=800)
    _free(e, 0.3)
    assert ctl.dispatchable(0.3) == [t]
    assert slo_targets(t.request) == (pytest.approx(0.5), None)
    assert slo_targets(req(headers={TTFT_HEADER: "800"})) == (0.8, None)  # never queued
    note_wait(t.request, 5.0)  # spent: the least budget, still a target
    assert slo_targets(t.request)[0] == pytest.approx(0.001)


class _Fleet:
    """One endpoint whose first token comes 0.2 s after a request is sent, with
    `latency-slo-scorer` (no prefix scorer needed) in front of it; time is told."""

    POLICY = {"plugins": [{"type": "latency-slo-scorer",
                           "parameters": {"usePrefixMatch": False, "minSamples": 20}},
                          {"type": "max-score-picker"}],
              "schedulingProfiles": [{"name": "default", "plugins": [
                  {"pluginRef": "latency-slo-scorer", "weight": 1},
                  {"pluginRef": "max-score-picker"}]}]}

    def __init__(self) -> None:
        self.ep = Endpoint("10.2.0.1", 8000, metrics=EndpointMetrics(scraped_at=0.0))
        self.router = Router([ModelPool("m", Pool("m", [self.ep]),
                                        Scheduler(parse_config(self.POLICY), seed=1))])
        self.now = 0.0

    def serve(self, r: InferenceRequest) -> None:
        d = self.router.schedule(r, self.now, [self.ep])
        self.router.dispatch(d, self.ep, self.now)
        self.router.first_token(d, self.now + 0.2)
        self.router.finish(d, self.now + 0.3, {"completion_tokens": 10})
        self.now += 1.0


def test_the_scheduler_sheds_a_sheddable_request_whose_wait_left_too_little(req: Req) -> None:
    """The latency model predicts 0.2 s: a 500-ms target is met when the request comes
    straight in, not after it waited 0.4 s in the queue (0.1 s left)."""
    fleet = _Fleet()
    for _ in range(40):
        fleet.serve(req(request_id=f"train{fleet.now:g}"))
    fresh = req(headers={TTFT_HEADER: "500"})
    fresh.priority = -1
    fleet.serve(fresh)
    late = req(headers={TTFT_HEADER: "500"})
    late.priority = -1
    note_wait(late, 0.4)
    with pytest.raises(TooManyRequests) as info:
        fleet.serve(late)
    assert info.value.status == 429 and info.value.code == "slo_unattainable"
    standard = req(headers={TTFT_HEADER: "500"})  # priority 0: sent, never shed for it
    note_wait(standard, 0.4)
    fleet.serve(standard)
