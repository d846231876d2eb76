"""Outlier detection (consecutive failures, failure ratio, growing back-off, half-open probe,
max ejection share) and active health-check thresholds."""

from __future__ import annotations

from inferoute.core.health import ActiveCheckSpec, HealthTracker, OutlierSpec


def _tracker(pool, **outlier) -> HealthTracker:
    return HealthTracker(pool, OutlierSpec.model_validate(
        {"consecutiveFailures": 3, "baseEjection": "10s", "maxEjection": "35s",
         "interval": "10s", **outlier}))


def test_consecutive_failures_eject_and_successes_reset(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = _tracker(pool_of(a, b))
    h.record(a, False, 0.0)
    h.record(a, False, 0.1)
    h.record(a, True, 0.2)  # resets the run
    h.record(a, False, 0.3)
    assert h.record(a, False, 0.4) is None and a.healthy
    ev = h.record(a, False, 0.5)
    assert ev is not None and ev.kind == "ejected" and ev.until == 10.5
    assert not a.healthy and h.state(a) == "ejected"
    assert [e.name for e in h.pool if e.healthy] == [b.name]


def test_backoff_grows_then_half_open_probe_decides(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = _tracker(pool_of(a, b))
    for t in (0.0, 0.1, 0.2):
        h.record(a, False, t)
    assert h.next_transition() == 10.2
    assert h.tick(10.0) == []
    [ev] = h.tick(10.2)
    assert ev.kind == "half-open" and a.healthy and h.state(a) == "half-open"
    ev = h.record(a, False, 10.3)  # one failure while half-open: ejected again, for longer
    assert ev.kind == "ejected" and ev.until == 10.3 + 20
    [ev] = h.tick(30.3)
    ev = h.record(a, False, 30.4)
    assert ev.until == 30.4 + 35  # 40 s capped at maxEjection 35 s
    h.tick(65.4)
    ev = h.record(a, True, 65.5)
    assert ev.kind == "restored" and a.healthy and h.state(a) == "healthy"


def test_quiet_intervals_forget_past_ejections(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = _tracker(pool_of(a, b))
    for t in (0.0, 0.1, 0.2):
        h.record(a, False, t)
    h.tick(10.2)
    h.record(a, True, 10.3)  # restored; one ejection on record
    h.tick(40.0)  # three quiet intervals later it is forgotten
    for t in (40.1, 40.2, 40.3):
        ev = h.record(a, False, t)
    assert ev.until == 40.3 + 10  # base again, not 20


def test_failure_ratio_ejects(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = _tracker(pool_of(a, b), consecutiveFailures=100, failureRatio=0.5, minRequests=10)
    events = []
    for i in range(10):  # alternating: never 2 in a row, but 50% failures
        events.append(h.record(a, i % 2 == 0, i * 0.1))
    assert [e.kind for e in events if e] == ["ejected"]


def test_at_most_max_ejection_percent(ep, pool_of) -> None:
    eps = [ep(i) for i in range(4)]
    h = _tracker(pool_of(*eps), maxEjectionPercent=50)
    for e in eps:
        for t in (0.0, 0.1, 0.2):
            h.record(e, False, t)
    assert sum(not e.healthy for e in eps) == 2
    single = ep(9)
    h1 = _tracker(pool_of(single))
    for t in (0.0, 0.1, 0.2):
        h1.record(single, False, t)
    assert not single.healthy  # at least one endpoint may always be ejected


def test_late_outcomes_while_ejected_are_ignored(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = _tracker(pool_of(a, b))
    for t in (0.0, 0.1, 0.2):
        h.record(a, False, t)
    assert h.record(a, True, 1.0) is None and not a.healthy


def test_active_checks_thresholds_and_schedule(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = HealthTracker(pool_of(a, b), OutlierSpec(),
                      ActiveCheckSpec(enabled=True, interval=5.0, unhealthy_threshold=2,
                                      healthy_threshold=2))
    assert h.due_checks(0.0) == [a, b]
    assert h.due_checks(4.9) == []
    assert h.due_checks(5.0) == [a, b]
    assert h.record_check(a, False, 5.1) is None and a.healthy
    assert h.record_check(a, False, 10.1).kind == "unhealthy" and not a.healthy
    assert h.state(a) == "unhealthy"
    assert h.record_check(a, True, 15.1) is None and not a.healthy
    assert h.record_check(a, True, 20.1).kind == "healthy" and a.healthy


def test_active_probe_closes_half_open(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    h = HealthTracker(pool_of(a, b), OutlierSpec(consecutive_failures=1, base_ejection=3.0),
                      ActiveCheckSpec(enabled=True, interval=60.0))
    h.due_checks(0.0)
    h.record(a, False, 1.0)
    assert a not in h.due_checks(2.0)  # no probes while ejected
    assert h.due_checks(4.0) == [a]  # probed as soon as the ejection ends
    assert h.record_check(a, True, 4.1).kind == "restored"
    h.record(a, False, 5.0)
    h.due_checks(11.0)
    assert h.record_check(a, False, 11.1).kind == "ejected"


def test_disabled_outlier_detection(ep, pool_of) -> None:
    a = ep(0)
    h = HealthTracker(pool_of(a, ep(1)), OutlierSpec(enabled=False))
    for t in range(20):
        assert h.record(a, False, float(t)) is None
    assert a.healthy


def test_removed_endpoints_are_forgotten(ep, pool_of) -> None:
    a, b = ep(0), ep(1)
    pool = pool_of(a, b)
    h = _tracker(pool)
    h.record(a, False, 0.0)
    h.record(b, False, 0.0)
    pool.remove(a.name)
    h.tick(1.0)
    assert set(h._states) == {b.name}
    h.forget(b.name)
    assert h.state(b) == "healthy"
