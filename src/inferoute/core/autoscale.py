"""How many replicas a pool needs to meet a TTFT target: the `inferoute_pool_desired_replicas`
estimator.

Sans-I/O: the shells report arrivals and finished requests (through `Router` listeners, so the
gateway, the ext_proc picker and the virtual benchmark feed it the same way) and ask for an
estimate with the time and the pool's ready endpoints. Per pool, over a sliding window of `W`
seconds:

    lambda    arrival rate (requests/s) of requests routed to the pool
    u         uncached prompt tokens per request (prompt - cached tokens from usage, else
              prompt x (1 - the pool's scraped prefix-cache hit rate))
    S         a replica's prefill speed, uncached tokens / TTFT; per replica the 90th
              percentile of its streamed requests (the least queued ones show the speed),
              then the median over replicas
    x = u/S   the time-to-first-token of a request that does not queue
    D         decode time per request (e2e - TTFT), mean
    k         KV cache per running request (sum of scraped KV use / sum of running requests)
    Q         requests waiting in the replicas' queues (scraped)

    prefill:  a replica's prefill is one server (M/D/1). Its mean queueing delay at load rho is
              rho x / (2 (1 - rho)); with the p90 delay taken as ln(10) times the mean, the
              target T holds while x + 2.3 rho x / (2 (1 - rho)) <= T, i.e.
              rho <= rho_max = 2 (T - x) / (2 (T - x) + 2.3 x)   (floored at 0.05)
              N_prefill = lambda x / rho_max + Q x / W           (the backlog drained over W)
    KV:       by Little's law lambda (x + D) requests are in service, each holding k of a
              replica's KV cache; N_kv = lambda (x + D) k / maxKvUtilization
    desired = clamp(ceil(max(N_prefill, N_kv)), minReplicas, maxReplicas)

With no finished request in the window yet the estimate holds the ready replica count (no
measurement, no opinion); with no arrivals it is `minReplicas`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .endpoint import Endpoint
from .errors import ConfigError
from .scheduling.config import parse_duration

__all__ = ["AutoscaleSpec", "Estimate", "PoolEstimator", "Autoscaler", "parse_autoscale_spec"]

#: p90 of the queueing delay over its mean (exponential tail: ln 10)
TAIL_FACTOR = math.log(10.0)
RHO_FLOOR = 0.05


@dataclass(frozen=True, slots=True)
class AutoscaleSpec:
    """The `autoscaling:` section of the serving config."""

    ttft_target: float = 1.0
    window: float = 60.0
    max_kv_utilization: float = 0.8
    min_replicas: int = 1
    max_replicas: int = 64
    #: finished-request samples kept per pool (the window's bound under heavy load)
    max_samples: int = 4096


_KEYS = {"ttftTarget": "ttft_target", "window": "window",
         "maxKvUtilization": "max_kv_utilization", "minReplicas": "min_replicas",
         "maxReplicas": "max_replicas", "maxSamples": "max_samples"}


def parse_autoscale_spec(data: Mapping[str, Any] | None) -> AutoscaleSpec:
    """The spec from `{ttftTarget: 1s, window: 60s, maxKvUtilization: 0.8, minReplicas: 1,
    maxReplicas: 64}` (every key optional); ConfigError names a bad key."""
    if data is None:
        return AutoscaleSpec()
    if not isinstance(data, Mapping):
        raise ConfigError("autoscaling must be a mapping like {ttftTarget: 1s}")
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise ConfigError(f"autoscaling: unknown keys {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(_KEYS)})")
    kw: dict[str, Any] = {}
    for key, field in _KEYS.items():
        if key not in data:
            continue
        value = data[key]
        try:
            if field in ("ttft_target", "window"):
                kw[field] = (float(value) if isinstance(value, (int, float))
                             and not isinstance(value, bool) else parse_duration(str(value)))
            elif field == "max_kv_utilization":
                kw[field] = float(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("must be an integer")
                kw[field] = value
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"autoscaling.{key}: {exc}") from None
    spec = AutoscaleSpec(**kw)
    if spec.ttft_target <= 0 or spec.window <= 0:
        raise ConfigError("autoscaling: ttftTarget and window must be positive")
    if not 0 < spec.max_kv_utilization <= 1:
        raise ConfigError("autoscaling.maxKvUtilization must be in (0, 1]")
    if not 0 <= spec.min_replicas <= spec.max_replicas or spec.max_samples < 16:
        raise ConfigError("autoscaling: need 0 <= minReplicas <= maxReplicas, maxSamples >= 16")
    return spec


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimate and the terms it came from (for the docs, the dashboard and tests)."""

    desired: int
    arrival_rate: float = 0.0
    unqueued_ttft: float = 0.0
    rho_max: float = 0.0
    prefill_replicas: float = 0.0
    kv_replicas: float = 0.0
    measured: bool = False


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    endpoint: str
    uncached: float
    ttft: float | None
    decode: float


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class PoolEstimator:
    """The window of one pool's arrivals and finished requests."""

    def __init__(self, spec: AutoscaleSpec) -> None:
        self.spec = spec
        #: arrivals counted per whole second: (second, count), at most window + 1 entries
        self._arrivals: deque[list[float]] = deque()
        self._first_arrival: float | None = None
        self._samples: deque[_Sample] = deque(maxlen=spec.max_samples)
        self._kv_per_request = 0.0

    def arrived(self, now: float) -> None:
        sec = math.floor(now)
        if self._arrivals and self._arrivals[-1][0] == sec:
            self._arrivals[-1][1] += 1
        else:
            self._arrivals.append([sec, 1])
        if self._first_arrival is None:
            self._first_arrival = now
        self._trim(now)

    def finished(self, endpoint: str, now: float, *, prompt_tokens: int,
                 cached_tokens: int | None, ttft: float | None, e2e: float,
                 hit_rate: float = 0.0) -> None:
        """A request served by `endpoint` is over; `ttft` None when not streamed (its first
        byte is its whole answer) and `cached_tokens` None when usage did not say."""
        if cached_tokens is None:
            uncached = prompt_tokens * (1.0 - hit_rate)
        else:
            uncached = max(0, prompt_tokens - cached_tokens)
        decode = e2e - ttft if ttft is not None else 0.0
        self._samples.append(_Sample(now, endpoint, float(uncached), ttft, max(0.0, decode)))

    def _trim(self, now: float) -> None:
        horizon = now - self.spec.window
        while self._arrivals and self._arrivals[0][0] + 1 <= horizon:
            self._arrivals.popleft()
        while self._samples and self._samples[0].at < horizon:
            self._samples.popleft()

    def arrival_rate(self, now: float) -> float:
        self._trim(now)
        if self._first_arrival is None:
            return 0.0
        span = min(self.spec.window, max(1.0, now - self._first_arrival))
        return sum(c for _, c in self._arrivals) / span

    def estimate(self, now: float, ready: Iterable[Endpoint]) -> Estimate:
        """Desired replicas at `now`, given the pool's ready endpoints (their scraped state)."""
        spec = self.spec
        ready = list(ready)
        lam = self.arrival_rate(now)
        if lam == 0.0:
            return Estimate(desired=spec.min_replicas)
        streamed = [s for s in self._samples if s.ttft is not None and s.ttft > 0]
        speeds: dict[str, list[float]] = {}
        for s in streamed:
            speeds.setdefault(s.endpoint, []).append(s.uncached / s.ttft)  # type: ignore[operator]
        if not streamed or not self._samples:
            return Estimate(desired=self._clamp(max(1, len(ready))), arrival_rate=lam)
        per_replica = [_quantile(v, 0.9) for v in speeds.values()]
        speed = _quantile(per_replica, 0.5)
        uncached = sum(s.uncached for s in self._samples) / len(self._samples)
        # x: the unqueued TTFT; the shortest observed TTFT bounds it below (fixed costs)
        x = max(uncached / speed if speed > 0 else 0.0, min(s.ttft for s in streamed))  # type: ignore[type-var]
        decode = sum(s.decode for s in streamed) / len(streamed)
        slack = spec.ttft_target - x
        rho = 2 * slack / (2 * slack + TAIL_FACTOR * x) if slack > 0 else 0.0
        rho = max(RHO_FLOOR, rho)
        waiting = sum(ep.metrics.waiting for ep in ready)
        n_prefill = lam * x / rho + waiting * x / spec.window
        running = sum(ep.metrics.running for ep in ready)
        if running > 0:
            self._kv_per_request = sum(ep.metrics.kv_usage for ep in ready) / running
        n_kv = lam * (x + decode) * self._kv_per_request / spec.max_kv_utilization
        desired = self._clamp(math.ceil(max(n_prefill, n_kv) - 1e-9))
        return Estimate(desired=desired, arrival_rate=lam, unqueued_ttft=x, rho_max=rho,
                        prefill_replicas=n_prefill, kv_replicas=n_kv, measured=True)

    def _clamp(self, n: int) -> int:
        return max(self.spec.min_replicas, min(self.spec.max_replicas, n))


def _hit_rate(endpoints: Iterable[Endpoint]) -> float:
    """The pool's prefix-cache hit rate from the scraped token counters (0 when unknown)."""
    queries = hits = 0.0
    for ep in endpoints:
        q, h = ep.metrics.prefix_cache_queries, ep.metrics.prefix_cache_hits
        if q and h is not None:
            queries += q
            hits += h
    return hits / queries if queries else 0.0


class Autoscaler:
    """A `Router` listener keeping one `PoolEstimator` per pool."""

    def __init__(self, spec: AutoscaleSpec) -> None:
        self.spec = spec
        self.pools: dict[str, PoolEstimator] = {}

    def pool(self, name: str) -> PoolEstimator:
        est = self.pools.get(name)
        if est is None:
            est = self.pools[name] = PoolEstimator(self.spec)
        return est

    # -- Router listener ----------------------------------------------------------------------

    def arrived(self, pool: Any, now: float) -> None:
        """A request resolved to `pool` (a `ModelPool`) and is about to be scheduled."""
        self.pool(pool.model).arrived(now)

    def first_token(self, decision: Any, now: float) -> None:
        decision.extras["first_token_at"] = now

    def finished(self, decision: Any, now: float, usage: Mapping[str, Any] | None) -> None:
        ep = decision.endpoint
        if ep is None:
            return
        req = decision.request
        usage = usage or {}
        prompt = usage.get("prompt_tokens")
        if not isinstance(prompt, int) or prompt < 0:
            prompt = req.prompt_tokens_estimate
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        if not isinstance(cached, int):
            cached = None
        first = decision.extras.get("first_token_at")
        ttft = first - req.arrival_time if (first is not None and req.stream) else None
        self.pool(decision.pool.model).finished(
            ep.name, now, prompt_tokens=prompt, cached_tokens=cached, ttft=ttft,
            e2e=now - req.arrival_time,
            hit_rate=_hit_rate(decision.pool.pool) if cached is None else 0.0)

    def estimate(self, pool: str, now: float, ready: Iterable[Endpoint]) -> Estimate:
        return self.pool(pool).estimate(now, ready)
