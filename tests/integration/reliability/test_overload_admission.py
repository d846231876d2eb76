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


def test_admission_protects_critical_requests_at_2x_capacity():
    ov = _overload()
    # the product's default queue-depth threshold (5): with 0 the gateway's own queue keeps the
    # replicas' queues empty, the saturation detector never trips and sheddable requests wait
    # instead of being shed, so a 2 s run may shed nothing
    on, off = ov.run(duration=2.0, load=2.0, max_tokens=16, seed=3, queue_depth=5)
    assert on.admission and not off.admission and on.rate == off.rate
    crit_on, crit_off = on.of("critical"), off.of("critical")
    assert len(crit_on) == len(crit_off) >= 5
    # no critical request fails, in either run; with admission on nothing fails except shedding
    assert all(r.complete for r in crit_on + crit_off), [r.error for r in crit_on + crit_off]
    assert not [r for r in on.results if r.failed], [r.error for r in on.results if r.failed]
    shed = [r for r in on.results if r.shed]
    assert shed and all(r.objective == "sheddable" and r.retry_after == "1" for r in shed)
    assert not any(r.shed for r in off.results)  # without admission nothing is shed...
    p90_on = ov.percentile([r.ttft for r in crit_on], 90)
    p90_off = ov.percentile([r.ttft for r in crit_off], 90)
    assert p90_on < p90_off, (p90_on, p90_off)  # ...and critical requests wait behind all
