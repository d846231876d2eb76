"""A release rule decides only while it is `active` (core/admission/release.py): an inactive
rule's pool is admitted and released exactly as a pool without a rule (dispatch budget, the
saturation detector, EDF), and tickets that waited under one regime are released by the other,
each exactly once."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from inferoute.core.admission import AdmissionController, Admitted, ReleaseRule, Ticket
from inferoute.core.admission.flowcontrol import TicketState
from inferoute.core.admission.objectives import OBJECTIVE_HEADER, Objectives, ObjectiveSpec
from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.errors import InferouteError
from inferoute.core.request import InferenceRequest
from inferoute.core.scheduling.config import SaturationSpec
from inferoute.core.slo import TTFT_HEADER

from .conftest import SlotsRule


def _controller(release: ReleaseRule | None) -> AdmissionController:
    return AdmissionController(
        SaturationDetector(SaturationSpec(metrics_staleness_threshold=0.5)),
        objectives=Objectives([ObjectiveSpec(name="critical", priority=5),
                               ObjectiveSpec(name="batch", priority=-1)]),
        release=release)


def _fleet() -> list[Endpoint]:
    return [Endpoint(host=f"10.2.0.{i + 1}", port=8000, metrics=EndpointMetrics(scraped_at=0.0))
            for i in range(2)]


def _trace(release: ReleaseRule | None, seed: int) -> list[tuple]:
    """What one controller decides on a random but seeded sequence of arrivals (some with a
    TTFT target, some critical, some sheddable), scrapes, releases, sends and ends."""
    rng = random.Random(seed)
    ctl, eps = _controller(release), _fleet()
    pool = Pool("m", eps)
    out: list[tuple] = []
    waiting: list[Ticket] = []
    sent: list[Endpoint] = []
    now = 0.0
    for n in range(400):
        now += rng.choice((0.0, 0.001, 0.01, 0.05))
        op = rng.random()
        if op < 0.5:
            headers = {}
            if rng.random() < 0.4:
                headers[TTFT_HEADER] = str(rng.choice((50, 200, 900)))
            if rng.random() < 0.2:
                headers[OBJECTIVE_HEADER] = rng.choice(("critical", "batch"))
            r = InferenceRequest(request_id=f"r{n}", api="completions", model="m",
                                 body={"model": "m", "prompt": "hi"}, headers=headers,
                                 prefix_text="hi", body_size=100)
            ctl.classify(r)
            try:
                got = ctl.admit(r, pool, now)
            except InferouteError as e:
                out.append(("rejected", r.request_id, e.status))
                continue
            if isinstance(got, Admitted):
                out.append(("admitted", r.request_id, got.room_on))
                sent.append(eps[n % 2])
                ctl.dispatched("m", sent[-1], now)
            else:
                waiting.append(got)
                out.append(("queued", r.request_id))
        elif op < 0.65:  # a scrape: the replicas' queues as they are now
            for ep in eps:
                ep.metrics = EndpointMetrics(running=rng.randint(0, 8),
                                             waiting=rng.randint(0, 6),
                                             kv_usage=rng.choice((0.3, 0.5, 0.6, 0.9)),
                                             scraped_at=now)
                ctl.observe("m", ep)
        elif op < 0.8 and sent:  # a request ends
            ctl.finished("m", sent.pop(rng.randrange(len(sent))), now)
        for t, err in ctl.expire(now):
            out.append(("expired", t.request.request_id, err.status))
        for t in ctl.dispatchable(now):
            out.append(("released", t.request.request_id, t.room_on))
            sent.append(eps[n % 2])
            ctl.dispatched("m", sent[-1], now)
    out.append(("left", ctl.queued("m")))
    return out


def test_a_pool_whose_rule_is_inactive_is_admitted_as_one_without_a_rule() -> None:
    for seed in range(6):
        rule = SlotsRule(free=1_000, active=False)
        with_rule, without = _trace(rule, seed), _trace(None, seed)
        assert with_rule == without, seed
        assert rule.asked == 0
        kinds = Counter(e[0] for e in without)
        # the budget held requests back and released them later: the sequences compared
        # exercise the queue, not only admissions at once
        assert kinds["queued"] > 20 and kinds["released"] > 20, (seed, kinds)


def test_an_inactive_rules_pool_releases_by_the_budget_in_deadline_order(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    rule = SlotsRule(free=1_000, active=False)
    ctl = _controller(rule)
    e = ep(waiting=9, scraped_at=0.0)  # over queueDepthThreshold 5: arrivals queue
    pool = Pool("m", [e])
    for name, ttft in (("plain", None), ("loose", "900"), ("tight", "100")):
        r = req(request_id=name, headers={} if ttft is None else {TTFT_HEADER: ttft})
        ctl.classify(r)
        assert isinstance(ctl.admit(r, pool, 0.0), Ticket)
    e.metrics = EndpointMetrics(waiting=4, scraped_at=0.01)  # room for 5 - 4 + 1 = 2
    assert [t.request.request_id for t in ctl.dispatchable(0.01)] == ["tight", "loose"]
    assert ctl.queued("m") == 1 and rule.asked == 0


def test_an_active_rule_decides_whatever_the_budget_says(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    rule = SlotsRule(free=0, active=True)
    ctl = _controller(rule)
    e = ep(waiting=0, scraped_at=0.0)  # the budget would admit six at once
    pool = Pool("m", [e])
    for i in range(3):
        assert isinstance(ctl.admit(req(request_id=f"w{i}"), pool, 0.0), Ticket)
    rule.free = 2
    assert [t.request.request_id for t in ctl.dispatchable(0.1)] == ["w2", "w1"]
    e.metrics = EndpointMetrics(waiting=50, scraped_at=0.1)  # saturated by its metrics
    rule.free = 1
    assert [t.request.request_id for t in ctl.dispatchable(0.1)] == ["w0"]


def test_tickets_waiting_across_active_inactive_active_are_released_once(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    rule = SlotsRule(free=0, active=True)
    ctl = _controller(rule)
    e = ep(waiting=3, scraped_at=0.0)  # the budget's room: 5 - 3 + 1 = 3
    pool = Pool("m", [e])
    tickets: dict[str, Ticket] = {}
    for i in range(6):
        t = ctl.admit(req(request_id=f"w{i}"), pool, 0.0)
        assert isinstance(t, Ticket)  # the rule places none
        tickets[f"w{i}"] = t
    released: list[str] = []

    def release(now: float) -> list[str]:
        names = [t.request.request_id for t in ctl.dispatchable(now)]
        released.extend(names)
        return names

    assert release(0.05) == []
    rule.free = 1
    assert release(0.05) == ["w5"]  # the rule's pick: the newest
    # not active: the budget and the queue's order; the rule's release since the scrape
    # counts against the room (3 - 1), and the rule is not asked
    rule.active, rule.free, asked = False, 1_000, rule.asked
    assert release(0.1) == ["w0", "w1"]
    late = ctl.admit(req(request_id="w6"), pool, 0.1)  # queued: others wait before it
    assert isinstance(late, Ticket)
    tickets["w6"] = late
    assert release(0.1) == [] and rule.asked == asked
    # active again: the rule releases what waited under the budget, newest first
    rule.active = True
    assert release(0.15) == ["w6", "w4", "w3", "w2"]
    assert release(0.2) == [] and ctl.queued("m") == 0
    assert Counter(released) == Counter(tickets.keys())  # each exactly once
    assert all(t.state is TicketState.DISPATCHED for t in tickets.values())
