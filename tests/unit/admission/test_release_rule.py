"""A release rule (core/admission/release.py) decides what waits and what goes next: admission
admits an arrival the rule places, queues the rest, and releases the requests the rule
chooses, out of the queue's order, from its highest band, whatever the scraped KV usage."""

from __future__ import annotations

from collections.abc import Callable

from inferoute.core.admission import AdmissionController, Admitted, ReleaseRule, Ticket
from inferoute.core.admission.flowcontrol import FlowQueue, TicketState
from inferoute.core.endpoint import Endpoint, Pool
from inferoute.core.request import InferenceRequest

from .conftest import SlotsRule


def _setup(ep: Callable[..., Endpoint], free: int, **metrics: float
           ) -> tuple[AdmissionController, SlotsRule, Pool]:
    rule = SlotsRule(free)
    assert isinstance(rule, ReleaseRule)
    endpoints = [ep(i, **metrics) for i in range(2)]
    return AdmissionController(release=rule), rule, Pool("m", endpoints)


def test_an_arrival_the_rule_places_is_admitted_the_rest_wait(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    adm, rule, pool = _setup(ep, 1)
    assert isinstance(adm.admit(req(), pool, 0.0), Admitted)
    assert isinstance(adm.admit(req(), pool, 0.0), Ticket)
    rule.free = 5
    # something waits: a new arrival queues behind it even though the rule has room
    assert isinstance(adm.admit(req(), pool, 0.0), Ticket)
    assert adm.queued("m") == 2


def test_release_follows_the_rules_choice_not_the_queue_order(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    adm, rule, pool = _setup(ep, 0)
    tickets = [adm.admit(req(request_id=f"w{i}"), pool, float(i)) for i in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert adm.dispatchable(3.0) == []  # nothing fits: all wait
    rule.free = 2
    out = adm.dispatchable(4.0)
    assert [t.request.request_id for t in out] == ["w2", "w1"]
    assert all(t.state is TicketState.DISPATCHED for t in out)
    # the rule saw the waiting requests oldest first
    assert rule.seen[1] == ["w0", "w1", "w2"]
    assert adm.queued("m") == 1


def test_the_rule_releases_while_every_replica_reports_a_full_kv_cache(
        ep: Callable[..., Endpoint], req: Callable[..., InferenceRequest]) -> None:
    # KV usage past the detector's 0.8 is the normal state of replicas a KV-fit rule keeps
    # full; without a rule the pool would count as saturated and release nothing
    adm, rule, pool = _setup(ep, 0, kv_usage=0.97)
    adm.admit(req(request_id="w0"), pool, 0.0)
    rule.free = 1
    assert [t.request.request_id for t in adm.dispatchable(0.1)] == ["w0"]


def test_the_queue_offers_its_highest_band_and_takes_any_ticket_of_it() -> None:
    q = FlowQueue()
    for prio, name in ((0, "a"), (3, "b"), (3, "c")):
        q.push(Ticket(request=name, pool="m", priority=prio, flow="f", size=1,
                      enqueued_at=0.0, deadline=9.0))
    assert sorted(t.request for t in q.top_band()) == ["b", "c"]
    (c,) = [t for t in q.top_band() if t.request == "c"]
    assert q.take(c) and not q.take(c)
    assert c.state is TicketState.DISPATCHED
    assert [t.request for t in q.top_band()] == ["b"]
    assert [q.pop().request, q.pop().request] == ["b", "a"]  # type: ignore[union-attr]
    assert len(q) == 0 and q.pop() is None and q.top_band() == []
