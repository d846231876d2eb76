"""Per-key rate limits: requests/min and tokens/min token buckets.

A bucket holds up to `burst` units and refills at `per_minute / 60` units per second. By default
the burst is 5% of the per-minute limit (at least one request), so over any 60 s window a key is
let through at most about 1.05x its limit, plus the last request's overshoot for tokens.

Tokens are charged in two steps, because a request's size is only known after its response:
`reserve` takes the estimate up front (prompt tokens plus `max_tokens` for each of the `n` /
`best_of` sequences asked for) and
`reconcile` charges or refunds the difference once usage is known. A bucket may go into debt;
the key then waits until the refill pays it off. A request is let through when its bucket holds
at least its cost, or is full (so a request larger than the burst is not refused forever).

No single request can lock a key out: the debt is bounded by one window's refill (`WINDOW`,
the minute the limits are per), so is Retry-After, and the shells cap the pre-charge at the
model's context length and settle a rejected request at zero tokens.

`MemoryRateLimiter` is the single-process implementation (sans-I/O, sync `*_now` methods plus
the async `RateLimiter` protocol); `inferoute.datalayer.redis_limits.RedisRateLimiter` shares
the same buckets between gateway replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from ..errors import TooManyRequests

__all__ = ["BURST_FRACTION", "estimate_tokens", "Limits", "MemoryRateLimiter", "over_limit",
           "RateLimiter", "Reservation", "sequences_requested", "TokenBucket"]

#: default burst as a fraction of the per-minute limit
BURST_FRACTION = 0.05
#: seconds the limits are per; bounds a bucket's debt and every Retry-After
WINDOW = 60.0


@dataclass(slots=True, frozen=True)
class Limits:
    """A key's limits; None means unlimited."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_requests: float | None = None
    burst_tokens: float | None = None

    def request_bucket(self) -> tuple[float, float] | None:
        """(capacity, refill per second) of the requests bucket, or None."""
        if self.requests_per_minute is None:
            return None
        rpm = self.requests_per_minute
        burst = self.burst_requests or max(1.0, rpm * BURST_FRACTION)
        return burst, rpm / 60.0

    def token_bucket(self) -> tuple[float, float] | None:
        if self.tokens_per_minute is None:
            return None
        tpm = self.tokens_per_minute
        burst = self.burst_tokens or max(1.0, tpm * BURST_FRACTION)
        return burst, tpm / 60.0

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None


@dataclass(slots=True)
class Reservation:
    """What `reserve` took, so `reconcile` can settle it."""

    key: str
    limits: Limits
    estimated_tokens: int
    settled: bool = False


class TokenBucket:
    """One bucket: `level` units at time `updated`, refilling at `rate`/s up to `capacity`."""

    __slots__ = ("capacity", "rate", "level", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("bucket capacity and rate must be > 0")
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> float:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
        return self.level

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken (0 when it can be now)."""
        need = min(cost, self.capacity)
        level = self.refill(now)
        return 0.0 if level >= need else (need - level) / self.rate

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` (negative refunds), capped at capacity, allowing debt of at most one
        window's refill."""
        self.refill(now)
        self.level = max(-self.rate * WINDOW, min(self.capacity, self.level - amount))

    def full(self, now: float) -> bool:
        return self.refill(now) >= self.capacity


class RateLimiter(Protocol):
    """What the gateway calls; implemented in memory and on Redis."""

    async def reserve(self, key: str, limits: Limits, estimated_tokens: int,
                      now: float) -> Reservation:
        """Take one request and the token estimate, or raise TooManyRequests (Retry-After)."""
        ...

    async def reconcile(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        """Charge (or refund) actual minus estimated tokens; idempotent."""
        ...


def over_limit(key_label: str, wait: float, what: str) -> TooManyRequests:
    """The 429 for a key over its limit (names the tenant, never the key); the wait is
    bounded by the window."""
    wait = min(wait, WINDOW)
    return TooManyRequests(f"rate limit of {what} per minute reached for '{key_label}'; "
                           f"retry in {math.ceil(wait)}s", retry_after=wait)


class MemoryRateLimiter:
    """Token buckets in this process. Bounded: when it tracks more than `max_keys` buckets it
    drops the full ones (a full bucket is the same as a new one)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, key: str, kind: str, spec: tuple[float, float], now: float) -> TokenBucket:
        b = self._buckets.get((key, kind))
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            b = self._buckets[(key, kind)] = TokenBucket(spec[0], spec[1], now)
        elif (b.capacity, b.rate) != spec:  # limits changed (config reload)
            b.capacity, b.rate = spec
            b.level = min(b.level, b.capacity)
        return b

    def _prune(self, now: float) -> None:
        for k in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[k]

    def reserve_now(self, key: str, limits: Limits, estimated_tokens: int,
                    now: float) -> Reservation:
        """Sync `reserve`: both buckets are checked before either is charged."""
        rspec, tspec = limits.request_bucket(), limits.token_bucket()
        rb = self._bucket(key, "req", rspec, now) if rspec else None
        tb = self._bucket(key, "tok", tspec, now) if tspec else None
        if rb is not None and (w := rb.wait_for(1, now)) > 0:
            raise over_limit(key, w, f"{limits.requests_per_minute:g} requests")
        if tb is not None and (w := tb.wait_for(estimated_tokens, now)) > 0:
            raise over_limit(key, w, f"{limits.tokens_per_minute:g} tokens")
        if rb is not None:
            rb.charge(1, now)
        if tb is not None:
            tb.charge(estimated_tokens, now)
        return Reservation(key, limits, estimated_tokens)

    def reconcile_now(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        tspec = reservation.limits.token_bucket()
        if tspec is None:
            return
        delta = actual_tokens - reservation.estimated_tokens
        if delta:
            self._bucket(reservation.key, "tok", tspec, now).charge(delta, now)

    async def reserve(self, key: str, limits: Limits, estimated_tokens: int,
                      now: float) -> Reservation:
        return self.reserve_now(key, limits, estimated_tokens, now)

    async def reconcile(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        self.reconcile_now(reservation, actual_tokens, now)

    def level(self, key: str, kind: str, now: float) -> float | None:
        """Current level of a key's `req` or `tok` bucket (None if never used)."""
        b = self._buckets.get((key, kind))
        return b.refill(now) if b is not None else None


def sequences_requested(body: Mapping[str, Any]) -> int:
    """How many completions one request asks the model server to generate: `n`, or `best_of`
    when larger (it generates `best_of` and returns the best `n`); 1 by default. The values
    were validated (integers >= 1) when the request was parsed."""
    counts = [v for name in ("n", "best_of")
              if isinstance(v := body.get(name), int) and not isinstance(v, bool) and v >= 1]
    return max(counts, default=1)


def estimate_tokens(prompt_tokens: int, max_tokens: int | None,
                    context_length: int | None = None, sequences: int = 1) -> int:
    """The pre-charge: prompt tokens plus `sequences` x the requested completion bound when
    given. With the model's context length known, each sequence's completion is capped at what
    the context leaves after the prompt (no request can use more; the prompt is counted once,
    as the model server's usage counts it)."""
    completion = max_tokens or 0
    if context_length:
        prompt_tokens = min(prompt_tokens, context_length)
        completion = min(completion, context_length - prompt_tokens)
    return max(1, prompt_tokens + max(1, sequences) * completion)
