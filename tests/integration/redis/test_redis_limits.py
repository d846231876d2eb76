"""RedisRateLimiter against a real redis-server: same semantics as the in-memory limiter,
atomic between concurrent callers (two "replicas"), server time, key expiry, fail-open."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from redis.exceptions import RedisError

from inferoute.core.admission.ratelimit import Limits, MemoryRateLimiter, Reservation
from inferoute.core.errors import TooManyRequests
from inferoute.datalayer.redis_limits import RedisRateLimiter

_prefixes = itertools.count()


@pytest.fixture
async def limiter(redis_url: str):
    lim = RedisRateLimiter.from_url(redis_url, prefix=f"t{next(_prefixes)}:",
                                    use_server_time=False, fail_open=False, timeout=10)
    yield lim
    await lim.close()


async def _outcome(lim, key, limits, est, now):
    try:
        await lim.reserve(key, limits, est, now)
        return ("ok", None)
    except TooManyRequests as exc:
        return ("429", round(exc.retry_after, 6))


async def test_matches_memory_limiter_on_a_random_trace(limiter) -> None:
    mem = MemoryRateLimiter()
    limits = Limits(requests_per_minute=120, tokens_per_minute=6000, burst_requests=4,
                    burst_tokens=500)
    rng = random.Random(5)
    t = 0.0
    for _ in range(300):
        t += rng.choice([0.0, 0.05, 0.2, 1.0])
        est = rng.randint(1, 400)
        a = await _outcome(limiter, "k", limits, est, t)
        b = await _outcome(mem, "k", limits, est, t)
        assert a == b, (t, est)
        if a[0] == "ok" and rng.random() < 0.5:
            actual = rng.randint(1, 600)
            await limiter.reconcile(Reservation("k", limits, est), actual, t)
            mem.reconcile_now(Reservation("k", limits, est), actual, t)


async def test_reconcile_refund_and_debt(limiter) -> None:
    limits = Limits(tokens_per_minute=6000, burst_tokens=1000)
    res = await limiter.reserve("k", limits, 500, 0.0)
    assert await limiter.level("k", "tok") == 500
    await limiter.reconcile(res, 100, 0.0)
    assert await limiter.level("k", "tok") == 900
    await limiter.reconcile(res, 5000, 0.0)  # settled already: ignored
    assert await limiter.level("k", "tok") == 900
    res2 = await limiter.reserve("k", limits, 100, 0.0)
    await limiter.reconcile(res2, 2000, 0.0)
    assert await limiter.level("k", "tok") == pytest.approx(-1100)
    with pytest.raises(TooManyRequests) as exc:
        await limiter.reserve("k", limits, 10, 0.0)
    assert exc.value.retry_after == pytest.approx(11.1)


async def test_two_replicas_share_the_budget_atomically(redis_url: str) -> None:
    prefix = f"shared{next(_prefixes)}:"
    # generous timeout: this checks atomicity, not latency (a timeout would fail open)
    a = RedisRateLimiter.from_url(redis_url, prefix=prefix, use_server_time=False, timeout=10)
    b = RedisRateLimiter.from_url(redis_url, prefix=prefix, use_server_time=False, timeout=10)
    limits = Limits(requests_per_minute=60, burst_requests=10)
    try:
        outcomes = await asyncio.gather(*[
            _outcome(a if i % 2 else b, "tenant", limits, 1, 0.0) for i in range(100)])
        assert sum(o[0] == "ok" for o in outcomes) == 10
        assert a.errors == b.errors == 0
    finally:
        await a.close()
        await b.close()


async def test_server_time_and_expiry(redis_url: str) -> None:
    lim = RedisRateLimiter.from_url(redis_url, prefix=f"srv{next(_prefixes)}:",
                                    fail_open=False, timeout=10)
    # refills one request every 3 s: the third call is refused unless 3 s pass between two
    # awaits on loopback, which no busy machine has done here
    limits = Limits(requests_per_minute=20, burst_requests=2)
    try:
        await lim.reserve("k", limits, 1, now=-1e9)  # `now` ignored: the server clock rules
        await lim.reserve("k", limits, 1, now=-1e9)
        with pytest.raises(TooManyRequests) as refused:
            await lim.reserve("k", limits, 1, now=-1e9)
        assert 0 < refused.value.retry_after <= 3
        ttl = await lim.client.pttl(f"{lim.prefix}k:req")
        assert 0 < ttl <= 6000 + 1000  # expires 1 s after it would be full again (<= 6 s)
        # the bucket refills on the server's clock although the caller's `now` stands still:
        # wait for that state (bounded), not for a time
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            try:
                await lim.reserve("k", limits, 1, now=-1e9)
                break
            except TooManyRequests as exc:
                assert loop.time() < deadline, "the bucket never refilled"
                await asyncio.sleep(min(0.25, exc.retry_after or 0.25))
    finally:
        await lim.close()


async def test_unlimited_tenant_does_not_touch_redis(limiter) -> None:
    res = await limiter.reserve("free", Limits(), 10, 0.0)
    assert res.estimated_tokens == 10
    assert await limiter.client.keys(f"{limiter.prefix}*") == []


async def test_unreachable_redis_fails_open_or_raises() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    limits = Limits(requests_per_minute=1, burst_requests=1)
    lim = RedisRateLimiter.from_url(f"redis://127.0.0.1:{port}/0", cooldown=60.0)
    for _ in range(3):  # fails open; after the first error Redis is left alone
        await lim.reserve("k", limits, 1, 0.0)
    assert lim.errors == 1
    strict = RedisRateLimiter.from_url(f"redis://127.0.0.1:{port}/0", fail_open=False,
                                       cooldown=0.0)
    with pytest.raises(RedisError):
        await strict.reserve("k", limits, 1, 0.0)
    with pytest.raises(RedisError):
        await strict.reconcile(Reservation("k", Limits(tokens_per_minute=60), 5), 9, 0.0)
    assert strict.errors == 2
    await lim.close()
    await strict.close()


@pytest.mark.parametrize("actual", [10 ** 6, 2 ** 62])
async def test_debt_is_bounded_by_the_window(limiter, actual: int) -> None:
    """A request that used far more than a minute's tokens leaves at most a window's debt
    (the memory limiter's bound): the key is usable again once the window has passed."""
    from inferoute.core.admission.ratelimit import WINDOW
    limits = Limits(tokens_per_minute=600)  # 10 tokens/s
    mem = MemoryRateLimiter()
    res = await limiter.reserve("k", limits, 10, 0.0)
    await limiter.reconcile(res, actual, 0.0)
    mem.reconcile_now(mem.reserve_now("k", limits, 10, 0.0), actual, 0.0)
    assert await limiter.level("k", "tok") == pytest.approx(-600.0)
    assert await limiter.level("k", "tok") == pytest.approx(mem.level("k", "tok", 0.0))
    with pytest.raises(TooManyRequests) as exc:
        await limiter.reserve("k", limits, 10, 0.0)
    assert exc.value.retry_after <= WINDOW
    await limiter.reserve("k", limits, 10, WINDOW + 2.0)  # the debt is paid off in a window
