"""The dispatch budget learns a replica's batch size only when its batch is full: (a) requests
waiting a step for the token budget do not make a batch size, (b) a batch bound by its sequence
limit (the same running count, requests waiting scrape after scrape, KV to spare) and (c) a
batch bound by KV (the waiting requests do not fit the free blocks) do; a batch bound by
sequences is forgotten when more requests are seen running, one bound by KV is what the full KV
holds now (fewer as the running requests grow, more when more are seen running). The request
admitted next goes to an endpoint with a free batch slot (`Admitted.room_on`). Core only,
injected times."""

from __future__ import annotations

from inferoute.core.admission import AdmissionController, Admitted, FlowControlSpec, Ticket
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


def test_waits_of_a_batch_not_known_full_count_only_while_the_gateway_holds_requests() -> None:
    """(a) A's batch is not known full and its scrape shows 4 requests waiting for the step's
    token budget: they go into its batch at its next step. While nothing waits in the gateway
    they do not turn an arrival away from it (two sent there since its scrape: the threshold's
    room, 5 + 1, still has 4). While requests wait in the gateway they count: A's own queue
    stays at the threshold, and what is released goes to B."""
    ctl, pool, a, b = _fleet()
    _scrape(ctl, a, 0.05, running=20, waiting=4)
    _scrape(ctl, b, 0.05, running=3)
    for t in (0.06, 0.07):
        ctl.dispatched("m", a, t)
    room_on = _room_on(ctl, pool, 0.08)
    assert room_on is None or a.name in room_on
    for e in (a, b):  # both saturated: arrivals wait in the gateway
        _scrape(ctl, e, 0.1, running=20, waiting=9)
    tickets = [ctl.admit(make_request(), pool, 0.11) for _ in range(2)]
    assert all(isinstance(t, Ticket) for t in tickets)
    _scrape(ctl, a, 0.15, running=20, waiting=4)
    _scrape(ctl, b, 0.15, running=3)
    for t in (0.16, 0.17):
        ctl.dispatched("m", a, t)
    released = ctl.dispatchable(0.18)
    assert released == tickets and all(t.room_on == frozenset({b.name}) for t in released)


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


def test_a_batch_bound_by_kv_is_learned_at_once_and_follows_what_the_kv_holds() -> None:
    """(c) The requests waiting do not fit the free KV: the batch is full at once, at the
    running count. When a later scrape shows more running (smaller requests), the full KV
    holds that many now; with its KV free again the replica takes requests past its batch."""
    ctl, pool, a, b = _fleet()
    _scrape(ctl, a, 0.05, running=10, waiting=2, kv=0.97)
    _scrape(ctl, b, 0.05, running=3)
    _scrape(ctl, a, 0.1, running=10, kv=0.97)
    _scrape(ctl, b, 0.1, running=3)
    assert _room_on(ctl, pool, 0.11) == frozenset({b.name})  # A is full
    _scrape(ctl, a, 0.15, running=14, kv=0.99)  # more run now: the KV holds 14
    _scrape(ctl, b, 0.15, running=3)
    assert _room_on(ctl, pool, 0.16) == frozenset({b.name})
    _scrape(ctl, a, 0.2, running=15, waiting=1, kv=0.99)  # full again, at 15
    _scrape(ctl, b, 0.2, running=3)
    _scrape(ctl, a, 0.25, running=15, kv=0.99)
    _scrape(ctl, b, 0.25, running=3)
    assert _room_on(ctl, pool, 0.26) == frozenset({b.name})


def test_a_batch_bound_by_kv_is_what_the_kv_holds_now_not_the_most_seen() -> None:
    """(c) Under a full KV the running requests grow by their output, so fewer fit: seen at 110
    once, the replica holds 103 now with requests waiting. It has no free slot (the most seen
    would leave it 6, and the budget would send it requests to wait in its own queue, in
    arrival order, past the gateway's deadline order): the next request goes to the other."""
    ctl, pool, a, b = _fleet()
    _scrape(ctl, a, 0.05, running=110, waiting=2, kv=0.99)
    _scrape(ctl, b, 0.05, running=3)
    _scrape(ctl, a, 0.1, running=103, waiting=2, kv=0.99)
    _scrape(ctl, b, 0.1, running=3)
    assert _room_on(ctl, pool, 0.11) == frozenset({b.name})


def test_a_sequence_limit_is_forgotten_when_more_run() -> None:
    """(b) learned at 32; a scrape with 40 running says the wait was not a sequence limit:
    the batch is unknown again and the replica takes requests by the threshold's room."""
    ctl, pool, a, b = _fleet()
    t = 0.0
    for _ in range(12):
        t += 0.05
        _scrape(ctl, a, t, running=32, waiting=3, kv=0.3)
        _scrape(ctl, b, t, running=3)
    _scrape(ctl, a, t + 0.05, running=32, kv=0.3)
    _scrape(ctl, b, t + 0.05, running=3)
    assert _room_on(ctl, pool, t + 0.06) == frozenset({b.name})  # learned: A is full
    _scrape(ctl, a, t + 0.1, running=40, kv=0.4)
    _scrape(ctl, b, t + 0.1, running=3)
    room_on = _room_on(ctl, pool, t + 0.11)
    assert room_on is None or a.name in room_on
