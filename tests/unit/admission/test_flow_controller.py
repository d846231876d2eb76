"""Flow control: strict priority bands, fairness between flows, FCFS/EDF, TTL, bounds, cancel,
the dispatch budget, and the 503 path."""

from __future__ import annotations

import pytest

from inferoute.core.admission import (AdmissionController, Admitted, FlowControlSpec,
                                      ObjectiveSpec, Objectives, Ticket, TicketState,
                                      FAIRNESS_HEADER, OBJECTIVE_HEADER)
from inferoute.core.admission.flowcontrol import FlowQueue, QueueFull
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.errors import NoEndpointAvailable, TooManyRequests


def _t(prio: int = 0, flow: str = "f", *, now: float = 0.0, ttl: float = 10.0,
       size: int = 1, name: str = "") -> Ticket:
    return Ticket(request=name, pool="m", priority=prio, flow=flow, size=size,
                  enqueued_at=now, deadline=now + ttl)


def _drain(q: FlowQueue) -> list[str]:
    out = []
    while (t := q.pop()) is not None:
        out.append(t.request)
    return out


def test_bands_are_strict() -> None:
    q = FlowQueue()
    for i in range(3):
        q.push(_t(0, name=f"mid{i}"))
        q.push(_t(-1, name=f"low{i}"))
        q.push(_t(5, name=f"high{i}"))
    assert _drain(q) == ["high0", "high1", "high2", "mid0", "mid1", "mid2", "low0", "low1",
                         "low2"]
    assert len(q) == 0 and q.bytes == 0


def test_round_robin_between_flows_in_a_band() -> None:
    q = FlowQueue()
    for i in range(6):  # a noisy flow arrives first with many requests
        q.push(_t(0, "noisy", name=f"n{i}"))
    q.push(_t(0, "quiet", name="q0"))
    q.push(_t(0, "quiet", name="q1"))
    assert _drain(q)[:5] == ["n0", "q0", "n1", "q1", "n2"]


def test_fairness_share_under_a_long_backlog() -> None:
    q = FlowQueue(max_requests=10_000)
    for i in range(900):
        q.push(_t(0, "a", name="a"))
    for i in range(100):
        q.push(_t(0, "b", name="b"))
        q.push(_t(0, "c", name="c"))
    first = [q.pop().request for _ in range(300)]  # type: ignore[union-attr]
    assert first.count("a") == first.count("b") == first.count("c") == 100


def test_edf_orders_by_deadline_fcfs_by_arrival() -> None:
    fcfs, edf = FlowQueue(ordering="fcfs"), FlowQueue(ordering="edf")
    for q in (fcfs, edf):
        q.push(_t(0, now=0.0, ttl=30.0, name="slow"))
        q.push(_t(0, now=1.0, ttl=2.0, name="urgent"))
    assert _drain(fcfs) == ["slow", "urgent"]
    assert _drain(edf) == ["urgent", "slow"]


def test_bounds_in_requests_and_bytes() -> None:
    q = FlowQueue(max_requests=2, max_bytes=100)
    q.push(_t(size=40))
    q.push(_t(size=40))
    with pytest.raises(QueueFull):
        q.push(_t(size=1))
    q2 = FlowQueue(max_requests=10, max_bytes=100)
    q2.push(_t(size=60))
    with pytest.raises(QueueFull):
        q2.push(_t(size=41))
    q2.push(_t(size=40))
    assert q2.bytes == 100


def test_cancel_and_expire() -> None:
    q = FlowQueue()
    a, b, c = _t(name="a", ttl=1), _t(name="b", ttl=5), _t(name="c", ttl=9)
    for t in (a, b, c):
        q.push(t)
    assert q.cancel(b) and not q.cancel(b)
    assert b.state is TicketState.CANCELLED and len(q) == 2
    assert q.next_deadline() == 1
    assert q.expire(0.99) == []
    assert q.expire(1.0) == [a] and a.state is TicketState.EXPIRED
    assert q.next_deadline() == 9  # the cancelled b's deadline is skipped
    assert _drain(q) == ["c"]
    assert q.expire(100.0) == []


def test_dead_entries_are_compacted() -> None:
    q = FlowQueue(max_requests=100_000)
    keep = _t(name="keep", ttl=1e9)
    q.push(keep)
    for i in range(5000):
        t = _t(0, f"f{i % 7}", ttl=1e9)
        q.push(t)
        q.cancel(t)
    assert len(q) == 1
    assert len(q._deadlines) < 200  # compacted, not 5001 entries
    assert _drain(q) == ["keep"]


# -- the controller -----------------------------------------------------------------------

def _ctl(**flow) -> AdmissionController:
    return AdmissionController(
        objectives=Objectives([ObjectiveSpec(name="critical", priority=10),
                               ObjectiveSpec(name="batch", priority=-1),
                               ObjectiveSpec(name="quick", priority=0, ttl=0.5)]),
        flow=FlowControlSpec(**flow))


def _set(e, now: float, waiting: int = 0, kv: float = 0.0) -> None:
    e.metrics = EndpointMetrics(waiting=waiting, kv_usage=kv, scraped_at=now)


def test_queue_while_saturated_then_release_in_priority_order(ep, pool_of, req) -> None:
    ctl = _ctl()
    e = ep(waiting=9, scraped_at=0.0)
    pool = pool_of(e)
    tickets = []
    for name in ("standard", "critical", "standard", "critical"):
        r = req(headers={OBJECTIVE_HEADER: name} if name == "critical" else {})
        ctl.classify(r)
        t = ctl.admit(r, pool, 0.1)
        assert isinstance(t, Ticket)
        tickets.append(t)
    assert ctl.dispatchable(0.15) == []  # still saturated
    _set(e, 0.2, waiting=0)  # capacity frees: headroom 6
    out = ctl.dispatchable(0.2)
    assert [t.priority for t in out] == [10, 10, 0, 0]
    assert all(t.state is TicketState.DISPATCHED for t in out)
    assert ctl.queued() == 0


def test_dispatch_budget_limits_release_between_scrapes(ep, pool_of, req) -> None:
    ctl = _ctl()
    e = ep(waiting=9, scraped_at=0.0)
    pool = pool_of(e)
    for _ in range(20):
        r = req()
        ctl.classify(r)
        ctl.admit(r, pool, 0.0)
    _set(e, 0.05, waiting=3)  # room for 5 - 3 + 1 = 3 before the next scrape
    assert len(ctl.dispatchable(0.05)) == 3
    assert ctl.dispatchable(0.06) == []  # same scrape: budget spent
    # while the queue is non-empty, new arrivals wait their turn even if not saturated
    r = req()
    ctl.classify(r)
    assert isinstance(ctl.admit(r, pool, 0.07), Ticket)
    _set(e, 0.1, waiting=0)
    assert len(ctl.dispatchable(0.1)) == 6
    assert ctl.queued() == 20 + 1 - 9


def test_admitted_directly_while_budget_lasts(ep, pool_of, req) -> None:
    ctl = _ctl()
    e = ep(waiting=4, scraped_at=0.0)
    pool = pool_of(e)
    results = []
    for _ in range(3):
        r = req()
        ctl.classify(r)
        results.append(ctl.admit(r, pool, 0.01))
    # headroom 5 - 4 + 1 = 2 -> the third waits for the next scrape
    assert [isinstance(x, Admitted) for x in results] == [True, True, False]


def test_fairness_header_and_tenant_flow_ids(req) -> None:
    ctl = _ctl()
    r = req(headers={FAIRNESS_HEADER: "user-7"})
    ctl.classify(r)
    assert r.fairness_id == "user-7"
    r2 = req(headers={FAIRNESS_HEADER: "user-7"})
    ctl.classify(r2, tenant_fairness_id="team-a")
    assert r2.fairness_id == "team-a"
    r3 = req()
    ctl.classify(r3)
    assert r3.fairness_id == "default"


def test_ttl_expiry_429_or_503(ep, pool_of, req) -> None:
    ctl = _ctl(ttl=2.0)
    e = ep(waiting=9, scraped_at=0.0)
    pool = pool_of(e)
    r = req()
    ctl.classify(r)
    t1 = ctl.admit(r, pool, 0.0)
    q = req(headers={OBJECTIVE_HEADER: "quick"})  # objective ttl 0.5 s
    ctl.classify(q)
    t2 = ctl.admit(q, pool, 0.0)
    assert ctl.next_deadline() == 0.5
    [(t, err)] = ctl.expire(0.5)
    assert t is t2 and isinstance(err, TooManyRequests) and err.status == 429
    assert "Retry-After" in err.headers
    e.healthy = False  # the only endpoint is gone: expiry says 503
    [(t, err)] = ctl.expire(2.0)
    assert t is t1 and isinstance(err, NoEndpointAvailable) and err.status == 503
    assert ctl.queued() == 0


def test_no_endpoint_is_503_at_once(ep, pool_of, req) -> None:
    ctl = _ctl()
    r = req()
    ctl.classify(r)
    with pytest.raises(NoEndpointAvailable):
        ctl.admit(r, pool_of(), 0.0)


def test_queue_full_is_429(ep, pool_of, req) -> None:
    ctl = _ctl(max_requests=2)
    pool = pool_of(ep(waiting=9, scraped_at=0.0))
    for _ in range(2):
        r = req()
        ctl.classify(r)
        ctl.admit(r, pool, 0.0)
    r = req()
    ctl.classify(r)
    with pytest.raises(TooManyRequests) as exc:
        ctl.admit(r, pool, 0.0)
    assert exc.value.code == "queue_full"


def test_cancelled_ticket_leaves_queue(ep, pool_of, req) -> None:
    ctl = _ctl()
    e = ep(waiting=9, scraped_at=0.0)
    pool = pool_of(e)
    ts = []
    for _ in range(3):
        r = req()
        ctl.classify(r)
        ts.append(ctl.admit(r, pool, 0.0))
    assert ctl.cancel(ts[0])
    assert not ctl.cancel(ts[0])
    assert ctl.queued("m") == 2
    _set(e, 0.1)
    assert ctl.dispatchable(0.1) == ts[1:]
    assert not ctl.cancel(ts[1])  # already dispatched


def test_pools_are_independent(ep, pool_of, req) -> None:
    ctl = _ctl()
    busy = pool_of(ep(0, waiting=9, scraped_at=0.0), model="a")
    free = pool_of(ep(1, waiting=0, scraped_at=0.0), model="b")
    ra, rb = req(model="a"), req(model="b")
    ctl.classify(ra)
    ctl.classify(rb)
    assert isinstance(ctl.admit(ra, busy, 0.1), Ticket)
    assert isinstance(ctl.admit(rb, free, 0.1), Admitted)
    assert ctl.queued("a") == 1 and ctl.queued("b") == 0


def test_drain_and_forget_pool(ep, pool_of, req) -> None:
    ctl = _ctl()
    pool = pool_of(ep(waiting=9, scraped_at=0.0))
    ts = []
    for _ in range(3):
        r = req()
        ctl.classify(r)
        ts.append(ctl.admit(r, pool, 0.0))
    out = ctl.drain()
    assert [t for t, _ in out] == ts and all(e.status == 503 for _, e in out)
    assert ctl.queued() == 0 and ctl.expire(1e9) == []
    r = req()
    ctl.classify(r)
    t = ctl.admit(r, pool, 0.0)
    assert ctl.forget_pool("m") == [t] and t.state is TicketState.CANCELLED
    assert ctl.forget_pool("m") == []


def test_custom_candidates_rule(ep, pool_of, req) -> None:
    a, b = ep(0, waiting=0, scraped_at=0.0), ep(1, waiting=9, scraped_at=0.0)
    pool = pool_of(a, b)
    only_b = AdmissionController(candidates_of=lambda p, now: [e for e in p if e is b])
    r = req()
    only_b.classify(r)
    assert isinstance(only_b.admit(r, pool, 0.1), Ticket)  # a is not a candidate
    nobody = AdmissionController(candidates_of=lambda p, now: [])
    with pytest.raises(NoEndpointAvailable):
        nobody.admit(r, pool, 0.1)
