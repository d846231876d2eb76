"""The gateway's own queue is a saturation signal: with the dispatch budget keeping the replicas'
queues short, their metrics never say saturated under overload, yet sheddable requests must be
shed (429) and critical ones go first. Core only, injected times."""

from __future__ import annotations

import pytest

from inferoute.core.admission import (OBJECTIVE_HEADER, AdmissionController, Admitted,
                                      FlowControlSpec, Objectives, ObjectiveSpec, Ticket)
from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.errors import TooManyRequests
from inferoute.core.scheduling.config import SaturationSpec


def _ctl(queue_depth: int) -> AdmissionController:
    return AdmissionController(
        SaturationDetector(SaturationSpec(queue_depth_threshold=queue_depth)),
        Objectives([ObjectiveSpec(name="critical", priority=10),
                    ObjectiveSpec(name="sheddable", priority=-1)]),
        FlowControlSpec(ttl=30.0, reserve=0))  # the budget alone (the reserve: test_top_reserve)


def _admit(ctl, req, pool, now: float, objective: str | None = None):  # type: ignore[no-untyped-def]
    r = req(headers={OBJECTIVE_HEADER: objective} if objective else {})
    ctl.classify(r)
    return ctl.admit(r, pool, now)


def _scrape(ctl, eps, now: float, *, running: int, waiting: int = 0) -> None:  # type: ignore[no-untyped-def]
    for e in eps:
        e.metrics = EndpointMetrics(running=running, waiting=waiting, scraped_at=now)
        ctl.observe("m", e)


def _pool(ctl, ep, pool_of, req):  # type: ignore[no-untyped-def]
    """Two endpoints of 8 slots, seen full once (a scrape long ago), full now."""
    eps = [ep(i, running=8, waiting=2, scraped_at=-1.0) for i in range(2)]
    pool = pool_of(*eps)
    first = _admit(ctl, req, pool, -1.0, "critical")  # the controller meets the pool
    if isinstance(first, Ticket):
        ctl.cancel(first)
    _scrape(ctl, eps, -1.0, running=8, waiting=2)
    return eps, pool


@pytest.mark.parametrize("queue_depth", [0, 5])
def test_a_backlog_that_outlives_a_scrape_sheds_sheddable_requests(
        ep, pool_of, req, queue_depth: int) -> None:
    ctl = _ctl(queue_depth)
    eps, pool = _pool(ctl, ep, pool_of, req)
    _scrape(ctl, eps, 0.0, running=8)  # full, nothing waiting: no threshold is near
    results = [_admit(ctl, req, pool, 0.01) for _ in range(40)]  # a flood of standard requests
    admitted = sum(isinstance(x, Admitted) for x in results)
    assert admitted == 2 * (queue_depth + 1)  # the threshold's room; the rest wait here
    for e in eps:
        for _ in range(queue_depth + 1):
            ctl.dispatched("m", e, 0.011)
    # the backlog is younger than the metrics: a sheddable arrival may still be served
    early = _admit(ctl, req, pool, 0.02, "sheddable")
    assert isinstance(early, Ticket)
    # a fresh scrape: full batches, nothing waiting in the replicas (the budget kept their
    # queues empty), so by their metrics the pool is not saturated at any threshold
    _scrape(ctl, eps, 0.05, running=8)
    assert not ctl.detector.is_saturated(eps, 0.05)
    released = ctl.dispatchable(0.05)  # one past each full batch
    assert len(released) == 2
    for e in eps:
        ctl.dispatched("m", e, 0.051)
    # the gateway's queue outlived a scrape with the budget spent: the pool is saturated
    with pytest.raises(TooManyRequests) as exc:
        _admit(ctl, req, pool, 0.06, "sheddable")
    assert exc.value.status == 429 and exc.value.code == "overloaded"
    assert exc.value.retry_after == 1.0
    shed = ctl.expire(0.06)  # the sheddable request that queued early is shed too
    assert [t for t, _ in shed] == [early] and shed[0][1].status == 429
    # a critical arrival waits in the gateway, but ahead of every standard request: the next
    # slot that frees (a request ending on a replica) is its, not the next scrape's
    crit = _admit(ctl, req, pool, 0.07, "critical")
    assert isinstance(crit, Ticket)
    ctl.finished("m", eps[0], 0.08)
    assert ctl.dispatchable(0.08) == [crit]


def test_a_burst_the_next_scrape_covers_sheds_nothing(ep, pool_of, req) -> None:
    ctl = _ctl(0)
    eps, pool = _pool(ctl, ep, pool_of, req)
    _scrape(ctl, eps, 0.0, running=7)  # one free slot each
    burst = [_admit(ctl, req, pool, 0.01) for _ in range(6)]
    assert sum(isinstance(x, Admitted) for x in burst) == 4  # free slot + one past, each
    for e in eps:
        ctl.dispatched("m", e, 0.011)
        ctl.dispatched("m", e, 0.011)
    late = _admit(ctl, req, pool, 0.02, "sheddable")
    assert isinstance(late, Ticket)
    _scrape(ctl, eps, 0.05, running=4)  # requests ended: the scrape's room covers the backlog
    assert len(ctl.dispatchable(0.05)) == 3
    assert ctl.expire(0.05) == [] and ctl.queued() == 0  # nothing shed, nothing left
    assert isinstance(_admit(ctl, req, pool, 0.06, "sheddable"), Admitted)


def test_an_endpoint_never_seen_full_gets_the_threshold_room(ep, pool_of, req) -> None:
    """Batch size unknown (never saw requests waiting): the threshold's room, backlog or not,
    so a burst on an idle fleet is not held back."""
    ctl = _ctl(5)
    e = ep(0, running=3, scraped_at=0.0)
    pool = pool_of(e)
    results = [_admit(ctl, req, pool, 0.01) for _ in range(10)]
    assert sum(isinstance(x, Admitted) for x in results) == 6


def test_the_gateways_own_count_bounds_the_room(ep, pool_of, req) -> None:
    """A page behind the gateway's own count (an end seen in both, a send not yet arrived)
    does not make room that is not there: what this gateway has in flight bounds it."""
    ctl = _ctl(0)
    eps, pool = _pool(ctl, ep, pool_of, req)
    _scrape(ctl, eps, 0.0, running=6)  # two free slots each, says the page...
    for e in eps:
        e.in_flight_requests = 9  # ...but this gateway has 9 requests on each
    assert not any(isinstance(_admit(ctl, req, pool, 0.01), Admitted) for _ in range(5))
    eps[0].in_flight_requests = 8  # one ended there
    ctl.finished("m", eps[0], 0.02)
    assert len(ctl.dispatchable(0.02)) == 1  # one past its batch of 8
