"""Token buckets: refill, burst, debt, reconciliation by actual usage, and the 5% bound over a
minute of virtual time."""

from __future__ import annotations

import pytest

from inferoute.core.admission.ratelimit import (Limits, MemoryRateLimiter, TokenBucket,
                                                estimate_tokens)
from inferoute.core.errors import TooManyRequests


def test_bucket_refill_and_wait() -> None:
    b = TokenBucket(capacity=10, rate=2, now=0.0)
    b.charge(10, 0.0)
    assert b.wait_for(4, 0.0) == pytest.approx(2.0)
    assert b.wait_for(4, 1.0) == pytest.approx(1.0)
    assert b.wait_for(4, 2.0) == 0.0
    assert b.refill(100.0) == 10  # capped
    b.charge(25, 100.0)  # debt
    assert b.level == -15
    assert b.wait_for(1, 100.0) == pytest.approx(8.0)
    b.charge(-100, 100.0)  # refund capped at capacity
    assert b.level == 10


def test_requests_per_minute_with_retry_after() -> None:
    lim = MemoryRateLimiter()
    limits = Limits(requests_per_minute=60, burst_requests=3)
    for _ in range(3):
        lim.reserve_now("t", limits, 1, 0.0)
    with pytest.raises(TooManyRequests) as exc:
        lim.reserve_now("t", limits, 1, 0.0)
    assert exc.value.retry_after == pytest.approx(1.0)
    assert exc.value.headers["Retry-After"] == "1"
    assert "'t'" in exc.value.message
    lim.reserve_now("t", limits, 1, 1.0)  # one refilled


def test_both_buckets_checked_before_charging() -> None:
    lim = MemoryRateLimiter()
    limits = Limits(requests_per_minute=600, tokens_per_minute=600, burst_tokens=100)
    lim.reserve_now("t", limits, 100, 0.0)
    req_before = lim.level("t", "req", 0.0)
    with pytest.raises(TooManyRequests):
        lim.reserve_now("t", limits, 50, 0.0)
    assert lim.level("t", "req", 0.0) == req_before  # the failed call charged nothing


def test_reconcile_charges_actual_usage() -> None:
    lim = MemoryRateLimiter()
    limits = Limits(tokens_per_minute=6000, burst_tokens=1000)  # 100 tokens/s
    res = lim.reserve_now("t", limits, 500, 0.0)
    assert lim.level("t", "tok", 0.0) == 500
    lim.reconcile_now(res, 200, 0.0)  # used less: refund 300
    assert lim.level("t", "tok", 0.0) == 800
    lim.reconcile_now(res, 10_000, 0.0)  # idempotent: a second settle is ignored
    assert lim.level("t", "tok", 0.0) == 800
    res2 = lim.reserve_now("t", limits, 100, 0.0)
    lim.reconcile_now(res2, 1700, 0.0)  # used more: debt
    assert lim.level("t", "tok", 0.0) == pytest.approx(-900)
    with pytest.raises(TooManyRequests) as exc:
        lim.reserve_now("t", limits, 100, 0.0)
    assert exc.value.retry_after == pytest.approx(10.0)


def test_request_bigger_than_burst_passes_when_full_then_waits() -> None:
    lim = MemoryRateLimiter()
    limits = Limits(tokens_per_minute=600, burst_tokens=30)  # 10 tokens/s
    lim.reserve_now("t", limits, 200, 0.0)  # full bucket: allowed, goes into debt
    with pytest.raises(TooManyRequests) as exc:
        lim.reserve_now("t", limits, 200, 0.0)
    assert exc.value.retry_after == pytest.approx(20.0)  # from -170 back to 30


@pytest.mark.parametrize("rpm", [30, 120, 600])
def test_requests_within_5_percent_over_a_virtual_minute(rpm: int) -> None:
    lim = MemoryRateLimiter()
    limits = Limits(requests_per_minute=rpm)
    admitted, t = 0, 0.0
    while t < 60.0:  # a client retrying every 10 ms, far above the limit
        try:
            lim.reserve_now("t", limits, 1, t)
            admitted += 1
        except TooManyRequests:
            pass
        t += 0.01
    assert rpm <= admitted <= rpm * 1.05 + 1


def test_tokens_within_5_percent_over_a_virtual_minute() -> None:
    lim = MemoryRateLimiter()
    tpm = 60_000
    limits = Limits(tokens_per_minute=tpm)
    used, t = 0, 0.0
    while t < 60.0:
        try:
            res = lim.reserve_now("t", limits, estimate_tokens(300, 200), t)
            actual = 420  # usage known after the response
            lim.reconcile_now(res, actual, t + 0.5)
            used += actual
        except TooManyRequests:
            pass
        t += 0.05
    assert tpm * 0.95 <= used <= tpm * 1.05 + 500


def test_keys_are_independent_and_memory_is_bounded() -> None:
    lim = MemoryRateLimiter(max_keys=10)
    limits = Limits(requests_per_minute=60, burst_requests=1)
    lim.reserve_now("a", limits, 1, 0.0)
    lim.reserve_now("b", limits, 1, 0.0)
    for i in range(50):
        lim.reserve_now(f"k{i}", limits, 1, 100.0 + i)  # earlier buckets refill -> prunable
    assert len(lim._buckets) <= 11


async def test_async_protocol_matches_sync() -> None:
    lim = MemoryRateLimiter()
    limits = Limits(requests_per_minute=60, burst_requests=1)
    res = await lim.reserve("t", limits, 10, 0.0)
    await lim.reconcile(res, 5, 0.0)
    with pytest.raises(TooManyRequests):
        await lim.reserve("t", limits, 10, 0.0)


def test_unlimited() -> None:
    assert Limits().unlimited
    assert not Limits(tokens_per_minute=1).unlimited
