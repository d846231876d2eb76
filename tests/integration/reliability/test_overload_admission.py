"""Bounded overload through a real gateway: 2x the measured capacity, mixed priorities, the same
seeded arrivals with admission on and off (benchmarks/overload.py prints the figures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _overload():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "overload.py"
    spec = importlib.util.spec_from_file_location("inferoute_bench_overload", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_shedding(run) -> None:  # type: ignore[no-untyped-def]
    """Sheddable requests are shed (429 + Retry-After), nothing else is, nothing fails."""
    assert run.admission
    crit = run.of("critical")
    assert len(crit) >= 5
    assert all(r.complete for r in crit), [r.error for r in crit]
    assert not [r for r in run.results if r.failed], [r.error for r in run.results if r.failed]
    shed = [r for r in run.results if r.shed]
    assert shed and all(r.objective == "sheddable" and r.retry_after == "1" for r in shed)


def test_admission_protects_critical_requests_at_2x_capacity():
    """The product's defaults (queueDepthThreshold 5): same arrivals with admission on and off."""
    ov = _overload()
    on, off = ov.run(duration=2.0, load=2.0, max_tokens=16, seed=3)
    assert not off.admission and on.rate == off.rate
    _check_shedding(on)
    crit_off = off.of("critical")
    assert len(crit_off) == len(on.of("critical"))
    assert all(r.complete for r in crit_off), [r.error for r in crit_off]
    assert not any(r.shed for r in off.results)  # without admission nothing is shed...
    # the gateway measured the critical share of its completions and kept slots for it
    # (flowControl.reserve: auto): its router reported the ends to admission
    assert on.reserved is not None and on.reserved >= 1, on.reserved
    p90_on = ov.percentile([r.ttft for r in on.of("critical")], 90)
    p90_off = ov.percentile([r.ttft for r in crit_off], 90)
    assert p90_on < p90_off, (p90_on, p90_off)  # ...and critical requests wait behind all


def test_sheddable_requests_are_shed_at_queue_depth_0():
    """At threshold 0 the budget keeps the replicas' queues empty, so their metrics never say
    saturated; the gateway's own backlog does, and sheddable requests are shed (they used to
    wait in the gateway's queue instead)."""
    ov = _overload()
    on, = ov.run(duration=2.0, load=2.0, max_tokens=16, seed=4, queue_depth=0,
                 modes=(True,))
    _check_shedding(on)
