"""Objectives from config and the header; sheddable requests get 429 only when saturated."""

from __future__ import annotations

import pytest

from inferoute.core.admission import (AdmissionController, Admitted, ObjectiveSpec, Objectives,
                                      OBJECTIVE_HEADER, FlowControlSpec)
from inferoute.core.errors import TooManyRequests


def _objectives() -> Objectives:
    return Objectives([ObjectiveSpec(name="critical", priority=10),
                       ObjectiveSpec(name="standard", priority=0),
                       ObjectiveSpec(name="batch", priority=-1)])


def test_resolution_header_tenant_default() -> None:
    objs = _objectives()
    assert objs.resolve({}).name == "default"
    assert objs.resolve({OBJECTIVE_HEADER: "batch"}).priority == -1
    assert objs.resolve({OBJECTIVE_HEADER: "nope"}).name == "default"
    assert objs.resolve({}, "critical").name == "critical"
    # the tenant's objective caps the header: a standard key cannot ask for critical
    assert objs.resolve({OBJECTIVE_HEADER: "critical"}, "standard").name == "standard"
    assert objs.resolve({OBJECTIVE_HEADER: "batch"}, "standard").name == "batch"


def test_duplicate_or_missing_default_rejected() -> None:
    with pytest.raises(ValueError):
        Objectives([ObjectiveSpec(name="a"), ObjectiveSpec(name="a")])
    with pytest.raises(ValueError):
        Objectives([ObjectiveSpec(name="a")], default="b")


def test_sheddable_rejected_only_when_saturated(ep, pool_of, req) -> None:
    ctl = AdmissionController(objectives=_objectives())
    e = ep(waiting=0, scraped_at=0.0)
    pool = pool_of(e)
    r = req(headers={OBJECTIVE_HEADER: "batch"})
    ctl.classify(r)
    assert r.priority == -1
    assert isinstance(ctl.admit(r, pool, 0.1), Admitted)
    e.metrics = type(e.metrics)(waiting=20, scraped_at=0.1)
    with pytest.raises(TooManyRequests) as exc:
        ctl.admit(r, pool, 0.15)
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "1"
    # non-negative priorities are never shed: they queue
    for name in ("standard", "critical"):
        r2 = req(headers={OBJECTIVE_HEADER: name})
        ctl.classify(r2)
        assert not isinstance(ctl.admit(r2, pool, 0.15), Admitted)


def test_flow_control_off_admits_non_sheddable_even_when_saturated(ep, pool_of, req) -> None:
    ctl = AdmissionController(objectives=_objectives(), flow=FlowControlSpec(enabled=False))
    pool = pool_of(ep(waiting=50, scraped_at=0.0))
    r = req()
    ctl.classify(r)
    assert isinstance(ctl.admit(r, pool, 0.1), Admitted)
    shed = req(headers={OBJECTIVE_HEADER: "batch"})
    ctl.classify(shed)
    with pytest.raises(TooManyRequests):
        ctl.admit(shed, pool, 0.1)
