"""`flowControl.reserve: auto`: the free slots kept for the top priority follow its share of
the pool's completions (core/admission/reserve.py). Core only, no clock."""

from __future__ import annotations

import math

import pytest

from inferoute.core.admission import (OBJECTIVE_HEADER, AdmissionController, Admitted,
                                      FlowControlSpec, Objectives, ObjectiveSpec, Ticket)
from inferoute.core.admission.reserve import TopReserve, slots_to_keep
from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.scheduling.config import SaturationSpec


def _blocked(rho: float, k: int) -> float:
    """P(no slot free) of the M/M/1/K queue, computed independently of the module."""
    weights = [rho ** i for i in range(k + 1)]
    return weights[-1] / sum(weights)


@pytest.mark.parametrize("rho", [0.001, 0.05, 0.2, 0.4, 0.6, 0.9, 0.99, 1.0, 1.03, 1.5, 7.0])
@pytest.mark.parametrize("miss", [0.01, 0.05, 0.2])
def test_the_reserve_is_the_smallest_that_meets_the_miss_rate(rho: float, miss: float) -> None:
    k = slots_to_keep(rho, miss, cap=64)
    if k < 64:
        assert _blocked(rho, k) <= miss + 1e-12
    if k > 0:
        assert _blocked(rho, k - 1) > miss


def test_known_values_and_bounds() -> None:
    assert slots_to_keep(0.0, 0.05, 8) == 0  # no top-priority traffic: nothing kept
    assert slots_to_keep(0.4, 0.05, 8) == 3  # 10.3% with 2, 3.9% with 3
    assert slots_to_keep(1.0, 0.05, 8) == 8  # 1/(K+1) > 5% up to the cap
    assert slots_to_keep(3.0, 0.05, 8) == 8  # more than the pool completes: all it may keep
    assert slots_to_keep(0.4, 0.05, 0) == 0
    ks = [slots_to_keep(r / 100, 0.05, 64) for r in range(1, 200)]
    assert ks == sorted(ks)  # more top-priority traffic never keeps fewer


def test_the_share_is_counted_over_the_last_completions() -> None:
    r = TopReserve(0.05, horizon=64)
    assert r.rho() == 0.0 and r.slots(8) == 0
    r.arrived()
    assert math.isinf(r.rho()) and r.slots(8) == 8  # arrivals and nothing ends yet
    for _ in range(400):  # steady: 2 top-priority arrivals per 5 completions
        r.arrived(), r.arrived()
        for _ in range(5):
            r.completed()
    assert r.rho() == pytest.approx(0.4, rel=0.05) and r.slots(8) == 3
    for _ in range(400):  # the top priority stops: its share fades with the completions
        r.completed()
    assert r.rho() < 0.01 and r.slots(8) == 0


def test_measured_misses_correct_the_model() -> None:
    """More than twice the allowed misses in a window of top-priority arrivals add a slot to
    the model's count; a window without a miss takes it back; never past the cap."""
    r = TopReserve(0.05, horizon=64)
    for _ in range(400):  # rho 0.4: the model keeps 3
        r.arrived(), r.arrived()
        for _ in range(5):
            r.completed()
    assert r.window == 32 and r.slots(8) == 3
    for i in range(32):  # 4 of 32 found no free slot: 12.5% > 2 x 5%
        r.outcome(found_slot=i % 8 != 0)
    assert r.slots(8) == 4
    for i in range(32):  # 3 of 32 (9.4%): within twice the aim, no change
        r.outcome(found_slot=i % 11 != 0)
    assert r.slots(8) == 4
    for _ in range(32):
        r.outcome(found_slot=True)
    assert r.slots(8) == 3  # back to the model's count, and not below it
    for _ in range(32):
        r.outcome(found_slot=True)
    assert r.slots(8) == 3
    for _ in range(20 * 32):  # misses all along: at most the cap
        r.outcome(found_slot=False)
    assert r.slots(8) == 8 and r.extra == 8


OBJECTIVES = Objectives([ObjectiveSpec(name="critical", priority=10),
                         ObjectiveSpec(name="standard", priority=0)], default="standard")
CRITICAL = {OBJECTIVE_HEADER: "critical"}


def _fleet(reserve: int | str = "auto") -> tuple[AdmissionController, Pool, list[Endpoint]]:
    """Two endpoints whose batch of 8 was seen full, 6 running each by a fresh scrape."""
    eps = [Endpoint(host=f"10.2.0.{i}", port=8000) for i in range(2)]
    pool = Pool("m", eps)
    ctl = AdmissionController(SaturationDetector(SaturationSpec(queue_depth_threshold=0)),
                              OBJECTIVES, FlowControlSpec(reserve=reserve))
    for ep in eps:
        ep.metrics = EndpointMetrics(running=8, waiting=1, scraped_at=0.0)
    first = _admit(ctl, pool, 0.0, CRITICAL)  # the controller meets the pool (full)...
    assert isinstance(first, Ticket) and ctl.cancel(first)
    for ep in eps:
        ctl.observe("m", ep)  # ...and learns the batch sizes
        ep.metrics = EndpointMetrics(running=6, waiting=0, scraped_at=1.0)
    return ctl, pool, eps


def _admit(ctl: AdmissionController, pool: Pool, now: float,
           headers: dict[str, str] | None = None) -> Admitted | Ticket:
    from .conftest import make_request
    r = make_request(headers=headers)
    ctl.classify(r)
    return ctl.admit(r, pool, now)


def _traffic(ctl: AdmissionController, pool: Pool, eps: list[Endpoint], critical: int,
             ends: int) -> None:
    """`critical` top-priority arrivals per `ends` completions, 40 rounds, all before the
    scrape at t=1 (which therefore holds them: only the counts stay)."""
    for _ in range(40):
        for i in range(critical):
            got = _admit(ctl, pool, 0.5, CRITICAL)
            if isinstance(got, Ticket):
                ctl.cancel(got)
            else:
                ctl.dispatched("m", eps[i % 2], 0.5)
        for i in range(ends):
            ctl.finished("m", eps[i % 2], 0.5)


def test_without_top_priority_traffic_nothing_is_kept() -> None:
    ctl, pool, eps = _fleet()
    for i in range(100):
        ctl.finished("m", eps[i % 2], 0.5)
    ctl._pools["m"].reserve = TopReserve(0.05)  # forget the first critical arrival
    assert ctl.reserve("m", 1.0) == 0
    got = [_admit(ctl, pool, 1.0) for _ in range(7)]
    # each endpoint's 2 free slots and the threshold's allowance past its batch (0 + 1)
    assert [isinstance(g, Admitted) for g in got] == [True] * 6 + [False]


def test_the_reserve_follows_the_top_prioritys_share() -> None:
    ctl, pool, eps = _fleet()
    _traffic(ctl, pool, eps, critical=2, ends=5)  # rho 0.4: 3 slots for the pool
    assert ctl.reserve("m", 1.0) == 3
    for ep in eps:  # 2 free slots in the pool, fewer than it keeps
        ep.metrics = EndpointMetrics(running=7, waiting=0, scraped_at=1.0)
    standard = _admit(ctl, pool, 1.0)
    assert isinstance(standard, Ticket)  # a standard request would take a kept one
    assert ctl.dispatchable(1.0) == []  # nor is it released into them
    sent = _admit(ctl, pool, 1.0, CRITICAL)  # past the waiting standard request, at once
    assert isinstance(sent, Admitted)
    ctl.dispatched("m", eps[0], 1.0)
    _traffic(ctl, pool, eps, critical=1, ends=40)  # rho 0.025: one slot for the pool
    assert ctl.reserve("m", 1.0) == 1
    assert ctl.dispatchable(1.0) == []  # the one free slot left is kept
    _traffic(ctl, pool, eps, critical=0, ends=10)  # the top priority stops: nothing kept
    assert ctl.reserve("m", 1.0) == 0
    (released,) = ctl.dispatchable(1.0)  # the standard request goes to the free slot
    assert released is standard and released.room_on == frozenset({eps[1].name})


def test_a_number_overrides_and_ends_must_be_reported() -> None:
    ctl, pool, eps = _fleet(reserve=1)
    _traffic(ctl, pool, eps, critical=2, ends=5)
    assert ctl.reserve("m", 1.0) == 2  # one on each endpoint
    ctl, pool, eps = _fleet()
    for _ in range(10):  # critical arrivals, but the shell never reports an end
        _admit(ctl, pool, 1.0, CRITICAL)
    assert ctl.reserve("m", 1.0) == 0


def test_the_setting_is_validated() -> None:
    assert FlowControlSpec().reserve == "auto"
    assert FlowControlSpec.model_validate({"reserve": 3, "reserveMiss": 0.1}).reserve_miss == 0.1
    for bad in ({"reserve": -1}, {"reserve": "some"}, {"reserveMiss": 0}, {"reserveMiss": 1}):
        with pytest.raises(ValueError):
            FlowControlSpec.model_validate(bad)


def test_a_request_goes_where_a_batch_slot_is_free() -> None:
    """An endpoint whose batch is full still has room for one request past it (it would wait in
    the model server's queue); while another endpoint has a free slot, the request is kept
    off the full one, so a critical request starts at the next step, not after a request
    ends there."""
    ctl, pool, eps = _fleet(reserve=0)
    eps[0].metrics = EndpointMetrics(running=8, waiting=0, scraped_at=1.0)  # full batch
    eps[1].metrics = EndpointMetrics(running=7, waiting=0, scraped_at=1.0)  # one slot free
    got = _admit(ctl, pool, 1.0, CRITICAL)
    assert isinstance(got, Admitted) and got.room_on == frozenset({eps[1].name})
    ctl.dispatched("m", eps[1], 1.0)
    # now no endpoint has a free slot: the room past the batches is for anyone
    nxt = _admit(ctl, pool, 1.0, CRITICAL)
    assert isinstance(nxt, Admitted) and nxt.room_on is None


def test_top_priority_requests_without_a_free_slot_are_counted() -> None:
    """The reserve's aim, measured: top-priority arrivals, and those that found no free batch
    slot (sent past a full batch, or queued)."""
    ctl, pool, eps = _fleet(reserve=0)
    base = ctl.queue_stats()["m"]
    eps[0].metrics = EndpointMetrics(running=8, waiting=0, scraped_at=1.0)
    eps[1].metrics = EndpointMetrics(running=7, waiting=0, scraped_at=1.0)
    assert isinstance(_admit(ctl, pool, 1.0, CRITICAL), Admitted)  # the free slot on eps[1]
    ctl.dispatched("m", eps[1], 1.0)
    assert isinstance(_admit(ctl, pool, 1.0, CRITICAL), Admitted)  # past a full batch
    ctl.dispatched("m", eps[0], 1.0)
    ctl.dispatched("m", eps[1], 1.0)  # (and the other one past its batch is taken)
    assert isinstance(_admit(ctl, pool, 1.0, CRITICAL), Ticket)  # queued
    _admit(ctl, pool, 1.0)  # a standard request is not counted
    st = ctl.queue_stats()["m"]
    assert st.top_arrivals - base.top_arrivals == 3
    assert st.top_without_slot - base.top_without_slot == 2


def test_only_misses_a_reserve_could_prevent_correct_it() -> None:
    """A pool saturated by its metrics queues everything: those waits do not grow the reserve;
    waits for a free slot in a full pool do."""
    ctl, pool, eps = _fleet()
    _traffic(ctl, pool, eps, critical=2, ends=5)
    assert ctl.reserve("m", 1.0) == 3
    reserve = ctl._pools["m"].reserve
    for ep in eps:  # requests waiting past the threshold (0): saturated by the metrics
        ep.metrics = EndpointMetrics(running=8, waiting=2, scraped_at=1.0)
    for _ in range(3 * reserve.window):
        got = _admit(ctl, pool, 1.0, CRITICAL)
        assert isinstance(got, Ticket) and ctl.cancel(got)
    assert reserve.extra == 0
    for ep in eps:  # full batches, nothing waiting: not saturated, no free slot anywhere
        ep.metrics = EndpointMetrics(running=8, waiting=0, scraped_at=1.0)
    for _ in range(reserve.window):
        got = _admit(ctl, pool, 1.0, CRITICAL)
        if isinstance(got, Ticket):
            ctl.cancel(got)
    assert reserve.extra == 1  # (the arrivals, with no end, also raised rho meanwhile)
