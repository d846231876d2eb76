"""Admission for the release rules alone (`rules_only`), what the gateway runs without an
admission section when a pool's policy has a release rule: only an active rule's pool waits;
everything else goes at once, as with no admission; what waited when the rule stopped
holding goes at the next `dispatchable`."""

from __future__ import annotations

from inferoute.core.admission import AdmissionController, Admitted, Ticket
from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.endpoint import Pool
from inferoute.core.scheduling.config import SaturationSpec

from .conftest import SlotsRule, make_endpoint, make_request


def _saturated_pool(model: str) -> Pool:
    """A pool whose only replica is saturated by its metrics (queue over the threshold)."""
    return Pool(model, [make_endpoint(0, waiting=50, running=8, kv_usage=0.99)])


def _controller(rule: SlotsRule, *, rules_only: bool) -> AdmissionController:
    det = SaturationDetector(SaturationSpec(metrics_staleness_threshold=10.0))
    return AdmissionController(det, release={"held": rule}, rules_only=rules_only)


def _admit_all(ctl: AdmissionController, pool: Pool, n: int) -> list[Admitted | Ticket]:
    return [ctl.admit(make_request(model=pool.model), pool, 0.0) for _ in range(n)]


def test_a_pool_without_a_rule_is_admitted_at_once_even_when_saturated() -> None:
    ctl = _controller(SlotsRule(free=0), rules_only=True)
    pool = _saturated_pool("other")
    assert all(isinstance(g, Admitted) for g in _admit_all(ctl, pool, 20))
    # the same pool under full admission waits (the saturation detector holds it)
    full = _controller(SlotsRule(free=0), rules_only=False)
    assert isinstance(full.admit(make_request(model="other"), pool, 1.0), Ticket)


def test_an_active_rule_holds_and_releases_its_pool() -> None:
    rule = SlotsRule(free=1)
    ctl = _controller(rule, rules_only=True)
    pool = Pool("held", [make_endpoint(0, waiting=0, running=0, kv_usage=0.1)])
    first = ctl.admit(make_request(model="held"), pool, 0.0)
    assert isinstance(first, Admitted)  # the rule placed it
    second = ctl.admit(make_request(model="held"), pool, 0.0)
    assert isinstance(second, Ticket)  # nothing fits: it waits
    assert ctl.dispatchable(0.1) == []
    rule.free = 1
    assert ctl.dispatchable(0.2) == [second]


def test_an_inactive_rule_admits_at_once_and_lets_every_waiting_request_go() -> None:
    rule = SlotsRule(free=0)
    ctl = _controller(rule, rules_only=True)
    waiting = _admit_all(ctl, _saturated_pool("held"), 3)
    assert all(isinstance(t, Ticket) for t in waiting)
    rule.active, asked = False, rule.asked
    assert isinstance(ctl.admit(make_request(model="held"), _saturated_pool("held"), 1.0),
                      Admitted)
    assert ctl.dispatchable(1.0) == waiting  # in the order they came, each once
    assert ctl.dispatchable(1.1) == []
    assert rule.asked == asked  # the inactive rule was not asked again
