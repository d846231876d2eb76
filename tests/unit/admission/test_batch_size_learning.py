"""The dispatch budget learns a replica's batch size only when its batch is full: (a) requests
waiting a step for the token budget do not make a batch size, (b) a batch bound by its
sequence limit (the same running count, requests waiting scrape after scrape, KV to spare) and
(c) a batch bound by KV (the waiting requests do not fit the free blocks) do; a batch learned
is forgotten when more requests are seen running. The request admitted next goes to an
endpoint with a free batch slot (`Admitted.room_on`). Core only, injected times."""

from __future__ import annotations

from inferoute.core.admission import AdmissionController, Admitted, FlowControlSpec
from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.scheduling.config import SaturationSpec

from .conftest import make_request


def _fleet() -> tuple[AdmissionController, Pool, Endpoint, Endpoint]:
    a, b = Endpoint(host="10.3.0.1", port=8000), Endpoint(host="10.3.0.2", port=8000)
    pool = Pool("m", [a, b])
    ctl = AdmissionController(SaturationDetector(SaturationSpec()), flow=FlowControlSpec(
        reserve=0))
    for e in (a, b):
        e.metrics = EndpointMetrics(scraped_at=0.0)
    assert isinstance(ctl.admit(make_request(), pool, 0.0), Admitted)  # meets the pool
    return ctl, pool, a, b


def _scrape(ctl: AdmissionController, e: Endpoint, at: float, *, running: int,
            waiting: int = 0, kv: float = 0.1) -> None:
    e.metrics = EndpointMetrics(running=running, waiting=waiting, kv_usage=kv, scraped_at=at)
    ctl.observe("m", e)


def _room_on(ctl: AdmissionController, pool: Pool, now: float) -> frozenset[str] | None:
    got = ctl.admit(make_request(), pool, now)
    assert isinstance(got, Admitted)
    return got.room_on


def test_waits_for_the_token_budget_teach_no_batch_size() -> None:
    """(a) While its batch fills, a replica keeps an arrival waiting a step whenever the step's
    tokens go to other prefills: each scrape shows one waiting, the running count moving up.
    Its batch is not full at the most seen running: a request still goes there."""
    ctl, pool, a, b = _fleet()
    t = 0.0
    for running in range(2, 30):
        t += 0.05
        _scrape(ctl, a, t, running=running, waiting=1)
        _scrape(ctl, b, t, running=3)
    _scrape(ctl, a, t + 0.05, running=29)  # the most it ever ran, nothing waiting
    room_on = _room_on(ctl, pool, t + 0.06)
    assert room_on is None or a.name in room_on


def test_a_batch_bound_by_sequences_is_learned_from_waits_that_persist() -> None:
    """(b) A replica at its sequence limit (32) keeps requests waiting scrape after scrape with
    KV to spare; the other one's waits are those of (a). The one at its limit has no free slot,
    the other has: the next request goes to the other, not behind a full batch."""
    ctl, pool, a, b = _fleet()
    t = 0.0
    for k in range(20):
        t += 0.05
        _scrape(ctl, a, t, running=31 if k == 7 else 32, waiting=3, kv=0.3)  # (one ended)
        _scrape(ctl, b, t, running=10 + k, waiting=1)
    _scrape(ctl, a, t + 0.05, running=32, kv=0.3)
    _scrape(ctl, b, t + 0.05, running=29)
    assert _room_on(ctl, pool, t + 0.06) == frozenset({b.name})


def test_a_batch_bound_by_kv_is_learned_at_once_and_forgotten_when_more_run() -> None:
    """(c) The requests waiting do not fit the free KV: the batch is full at once. When a
    later scrape shows more running (smaller requests), that size was not the batch's."""
    ctl, pool, a, b = _fleet()
    _scrape(ctl, a, 0.05, running=10, waiting=2, kv=0.97)
    _scrape(ctl, b, 0.05, running=3)
    _scrape(ctl, a, 0.1, running=10, kv=0.97)
    _scrape(ctl, b, 0.1, running=3)
    assert _room_on(ctl, pool, 0.11) == frozenset({b.name})  # A is full
    _scrape(ctl, a, 0.15, running=14, kv=0.9)  # more run now: not full at 10
    _scrape(ctl, b, 0.15, running=3)
    room_on = _room_on(ctl, pool, 0.16)
    assert room_on is None or a.name in room_on
    _scrape(ctl, a, 0.2, running=15, waiting=1, kv=0.99)  # full again, at 15
    _scrape(ctl, b, 0.2, running=3)
    _scrape(ctl, a, 0.25, running=15, kv=0.99)
    _scrape(ctl, b, 0.25, running=3)
    assert _room_on(ctl, pool, 0.26) == frozenset({b.name})
