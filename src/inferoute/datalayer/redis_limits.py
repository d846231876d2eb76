"""Rate-limit buckets on Redis, shared by every gateway replica.

The same token buckets as `core.admission.ratelimit.MemoryRateLimiter` (same `RateLimiter`
protocol, same burst and debt rules), kept in Redis hashes `{prefix}{tenant}:req|tok` with fields
`l` (level) and `t` (time of the level). One Lua script refills, checks and charges all of a
request's buckets atomically, so two replicas cannot both spend the last token. A bucket's debt
is at most one window's refill (as in memory): a request that used far more than a minute's
tokens delays its key by at most the window.

Time: replicas do not share a monotonic clock, so by default the script reads the Redis server's
clock (`TIME`) and the `now` argument is ignored; `use_server_time=False` uses `now` instead
(tests with virtual time, or a single replica). A bucket key expires once it would have refilled,
since a full bucket and a missing one mean the same.

When Redis cannot be reached the limiter fails open (the request goes through, `errors` counts
it) unless `fail_open=False`, in which case the Redis error propagates. After an error it leaves
Redis alone for `cooldown` seconds, and `from_url` sets short timeouts without retries, so an
outage costs requests no latency.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..core.admission.ratelimit import WINDOW, Limits, Reservation, over_limit

# KEYS: bucket keys. ARGV: mode ("take" | "adjust"), now ("" = server TIME), the window (s),
# then per key: capacity, refill per second, cost. "take" checks every bucket before charging
# any. A level never goes below minus one window's refill (the debt bound of the memory buckets).
# Returns {1} when charged, or {0, index of the short bucket (1-based), seconds to wait}.
_SCRIPT = """
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[3])
local levels = {}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i + 1])
  local rate = tonumber(ARGV[3 * i + 2])
  local v = redis.call('HMGET', KEYS[i], 'l', 't')
  local level, at = tonumber(v[1]), tonumber(v[2])
  if level == nil or at == nil then
    level, at = cap, now
  end
  if now > at then
    level = math.min(cap, level + (now - at) * rate)
  end
  levels[i] = level
end
if ARGV[1] == 'take' then
  for i = 1, #KEYS do
    local cap, rate, cost = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]),
                            tonumber(ARGV[3 * i + 3])
    local need = math.min(cost, cap)
    if levels[i] < need then
      return {0, i, tostring((need - levels[i]) / rate)}
    end
  end
end
for i = 1, #KEYS do
  local cap, rate, cost = tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]),
                          tonumber(ARGV[3 * i + 3])
  local level = math.max(-rate * window, math.min(cap, levels[i] - cost))
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate * 1000) + 1000)
end
return {1}
"""


class RedisRateLimiter:
    """`RateLimiter` on a shared Redis (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "inferoute:rl:",
                 use_server_time: bool = True, fail_open: bool = True,
                 cooldown: float = 1.0) -> None:
        self.client = client
        self.prefix = prefix
        self.use_server_time = use_server_time
        self.fail_open = fail_open
        self.cooldown = cooldown
        self.errors = 0
        self._down_until = 0.0
        self._script = client.register_script(_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5, **kw: Any) -> "RedisRateLimiter":
        """e.g. `redis://127.0.0.1:6379/0`; `timeout` bounds connecting and each call."""
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout,
                                         socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
        return cls(client, **kw)

    async def _call(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script; None when Redis is unavailable and the limiter fails open."""
        if time.monotonic() < self._down_until:
            if self.fail_open:
                return None
            raise RedisError("rate-limit store unavailable (cooling down after an error)")
        try:
            return await self._script(keys=keys, args=args)
        except (RedisError, OSError):
            self.errors += 1
            self._down_until = time.monotonic() + self.cooldown
            if self.fail_open:
                return None
            raise

    async def close(self) -> None:
        await self.client.aclose()

    def _now(self, now: float) -> str:
        return "" if self.use_server_time else repr(float(now))

    async def reserve(self, key: str, limits: Limits, estimated_tokens: int,
                      now: float) -> Reservation:
        keys: list[str] = []
        args: list[Any] = ["take", self._now(now), repr(WINDOW)]
        what: list[str] = []
        if (spec := limits.request_bucket()) is not None:
            keys.append(f"{self.prefix}{key}:req")
            args += [repr(spec[0]), repr(spec[1]), 1]
            what.append(f"{limits.requests_per_minute:g} requests")
        if (spec := limits.token_bucket()) is not None:
            keys.append(f"{self.prefix}{key}:tok")
            args += [repr(spec[0]), repr(spec[1]), int(estimated_tokens)]
            what.append(f"{limits.tokens_per_minute:g} tokens")
        res = Reservation(key, limits, estimated_tokens)
        if not keys:
            return res
        reply = await self._call(keys, args)
        if reply is None:
            return res
        if int(reply[0]) != 1:
            raise over_limit(key, float(reply[2]), what[int(reply[1]) - 1])
        return res

    async def reconcile(self, reservation: Reservation, actual_tokens: int, now: float) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        spec = reservation.limits.token_bucket()
        delta = actual_tokens - reservation.estimated_tokens
        if spec is None or not delta:
            return
        await self._call([f"{self.prefix}{reservation.key}:tok"],
                         ["adjust", self._now(now), repr(WINDOW), repr(spec[0]), repr(spec[1]),
                          int(delta)])

    async def level(self, key: str, kind: str) -> float | None:
        """The stored level of a bucket (without refill), None if absent."""
        v = await self.client.hget(f"{self.prefix}{key}:{kind}", "l")
        return float(v) if v is not None else None
