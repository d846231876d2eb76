"""Regression: a sheddable request that queued while the pool still had capacity (budget spent
between scrapes) is shed with 429 once the pool is saturated, instead of waiting behind the
non-sheddable ones until its TTL (found by tests/integration/reliability)."""

from __future__ import annotations

from inferoute.core.admission import (
    OBJECTIVE_HEADER,
    AdmissionController,
    FlowControlSpec,
    Objectives,
    ObjectiveSpec,
    Ticket,
)
from inferoute.core.admission.flowcontrol import FlowQueue, TicketState
from inferoute.core.errors import TooManyRequests


def _ctl() -> AdmissionController:
    return AdmissionController(
        objectives=Objectives([ObjectiveSpec(name="critical", priority=10),
                               ObjectiveSpec(name="batch", priority=-1),
                               ObjectiveSpec(name="bulk", priority=-5)]),
        flow=FlowControlSpec(ttl=30.0))


def test_queued_sheddable_shed_when_pool_saturates(ep, pool_of, req) -> None:
    ctl = _ctl()
    e = ep(waiting=5, scraped_at=0.0)  # not saturated; headroom 1 until the next scrape
    pool = pool_of(e)
    first = req(headers={OBJECTIVE_HEADER: "critical"})
    ctl.classify(first)
    assert not isinstance(ctl.admit(first, pool, 0.01), Ticket)
    waiting = []
    for name in ("batch", "critical", "bulk", "batch"):
        r = req(headers={OBJECTIVE_HEADER: name})
        ctl.classify(r)
        t = ctl.admit(r, pool, 0.02)
        assert isinstance(t, Ticket), name  # budget spent: they queue
        waiting.append(t)
    assert ctl.expire(0.03) == []  # not saturated: nothing is shed
    e.metrics = type(e.metrics)(waiting=6, scraped_at=0.05)  # now saturated
    shed = ctl.expire(0.06)
    assert {id(t) for t, _ in shed} == {id(t) for t in waiting if t.priority < 0}
    for t, err in shed:
        assert isinstance(err, TooManyRequests) and err.status == 429
        assert err.headers["Retry-After"] == "1" and t.state is TicketState.EXPIRED
    assert ctl.queued() == 1 and ctl.queue_stats()["m"].by_priority == {10: 1}
    e.metrics = type(e.metrics)(waiting=0, scraped_at=0.1)
    assert ctl.dispatchable(0.11) == [waiting[1]]
    assert ctl.queued() == 0 and ctl.next_deadline() is None


def test_flow_queue_shed_below_keeps_accounting(req) -> None:
    q = FlowQueue(max_requests=10)
    tickets = []
    for i, prio in enumerate([-1, 0, -2, 3, -1]):
        t = Ticket(request=req(), pool="m", priority=prio, flow=f"f{i % 2}", size=10,
                   enqueued_at=0.0, deadline=5.0 + i)
        q.push(t)
        tickets.append(t)
    assert q.peek_lowest_priority() == -2
    shed = q.shed_below(0)
    assert sorted(t.priority for t in shed) == [-2, -1, -1]
    assert len(q) == 2 and q.bytes == 20 and q.peek_lowest_priority() == 0
    assert q.expire(100.0) == [tickets[1], tickets[3]]  # only the live ones expire
    assert len(q) == 0 and q.bytes == 0 and q.next_deadline() is None
