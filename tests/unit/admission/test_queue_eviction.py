"""A full queue makes room for a higher priority: the newest request of the lowest band below
it is evicted (429 queue_full on the next expire), never one of the same or a higher band."""

from __future__ import annotations

import pytest

from inferoute.core.admission import (AdmissionController, FlowControlSpec, ObjectiveSpec,
                                      Objectives, OBJECTIVE_HEADER, Ticket, TicketState)
from inferoute.core.admission.flowcontrol import FlowQueue
from inferoute.core.errors import TooManyRequests


def _t(prio: int, name: str, size: int = 1, flow: str = "f") -> Ticket:
    return Ticket(request=name, pool="m", priority=prio, flow=flow, size=size,
                  enqueued_at=0.0, deadline=10.0)


@pytest.mark.parametrize("ordering", ["fcfs", "edf"])
def test_evicts_newest_of_lowest_band(ordering: str) -> None:
    q = FlowQueue(ordering=ordering, max_requests=4)  # type: ignore[arg-type]
    for t in (_t(0, "mid0"), _t(-1, "low0", flow="a"), _t(-1, "low1", flow="b"),
              _t(5, "high0")):
        q.push(t)
    [out] = q.evict_for(10, 1)
    assert out.request == "low1" and out.state is TicketState.EXPIRED
    q.push(_t(10, "crit"))
    [out] = q.evict_for(10, 1)
    assert out.request == "low0"
    q.push(_t(10, "crit2"))
    assert q.evict_for(0, 1) == []  # nothing below 0 left: no eviction for a standard one
    assert q.evict_for(5, 1)[0].request == "mid0"
    order = []
    while (t := q.pop()) is not None:
        order.append(t.request)
    assert order == ["crit", "crit2", "high0"] and len(q) == 0 and q.bytes == 0


def test_byte_bound_evicts_enough_or_nothing() -> None:
    q = FlowQueue(max_requests=100, max_bytes=100)
    for i in range(3):
        q.push(_t(-1, f"low{i}", size=30))
    assert q.evict_for(5, 200) == []  # even all of them would not make room: keep them
    out = q.evict_for(5, 50)
    assert [t.request for t in out] == ["low2", "low1"] and q.bytes == 30


def test_controller_full_queue_evicts_for_critical(ep, pool_of, req) -> None:
    ctl = AdmissionController(
        objectives=Objectives([ObjectiveSpec(name="critical", priority=10),
                               ObjectiveSpec(name="standard", priority=0)]),
        flow=FlowControlSpec(max_requests=3))
    pool = pool_of(ep(waiting=9, scraped_at=0.0))  # saturated: everything queues

    def admit(objective: str) -> Ticket:
        r = req(headers={OBJECTIVE_HEADER: objective})
        ctl.classify(r)
        res = ctl.admit(r, pool, 0.0)
        assert isinstance(res, Ticket)
        return res

    standard = [admit("standard") for _ in range(3)]
    crit = [admit("critical") for _ in range(3)]  # each takes the newest standard's place
    answered = ctl.expire(0.0)
    assert [t for t, _ in answered] == standard[::-1]
    assert all(isinstance(e, TooManyRequests) and e.code == "queue_full" for _, e in answered)
    with pytest.raises(TooManyRequests):  # the queue is all critical now: 429 at once
        admit("critical")
    assert ctl.queued() == 3 and all(t.state is TicketState.QUEUED for t in crit)
