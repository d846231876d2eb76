"""How many replicas a pool needs to meet a TTFT target: the `inferoute_pool_desired_replicas`
estimator.

Sans-I/O: the shells report arrivals, dispatches, first tokens and finished requests (as
`Router` listeners, so the gateway, the ext_proc picker and the virtual benchmark feed it the
same way) and ask for an estimate with the time and the pool's ready endpoints. Per pool, over
a sliding window of `W` seconds:

    lambda    arrival rate (requests/s) of requests sent to the pool's replicas, `horizon` seconds
              ahead (a replica asked for now serves that much later): the least-squares line
              through the window's per-second arrival counts, at now + horizon (at least 0)
    u         uncached prompt tokens per request (prompt - cached tokens from usage, else
              prompt x (1 - the pool's scraped prefix-cache hit rate))
    a, 1/S    fixed cost and prefill speed S: the least-squares line TTFT = a + u / S through
              the streamed requests that found no queue (scraped waiting 0 at dispatch), refit
              through those at or under it (the lower envelope: the requests that shared their
              prefill steps least); the last fit is kept while every request queues; with too
              little spread in u, a is their median TTFT and 1/S = 0
    x         the TTFT of a request that does not queue, a + u / S
    O, D      output tokens and decode time (e2e - TTFT) per request
    beta      what one more running sequence adds to a decode step: the least-squares slope of
              time per output token over the replica's running requests at the first token
    k         KV cache per running request (sum of scraped KV use / sum of running requests)
    Q         requests waiting in the replicas' queues (scraped)

    work:     a request occupies a replica for s = x + O beta (its prefill, plus what its
              decoding adds to every step it shares)
    TTFT:     a replica is one server of load rho = lambda s / N. Its mean queueing delay is
              rho s / (2 (1 - rho)) (M/D/1); with the p90 delay taken as ln(10) times the
              mean, the target T holds while x + 2.3 rho s / (2 (1 - rho)) <= T, i.e.
              rho <= rho_max = 2 (T - x) / (2 (T - x) + 2.3 s)     (floored at 0.05)
              N_ttft = lambda s / rho_max + Q s / W               (the backlog drained over W)
    KV:       by Little's law lambda (x + D) requests are in service, each holding k of a
              replica's KV cache; N_kv = lambda (x + D) k / maxKvUtilization
    desired = clamp(ceil(max(N_ttft, N_kv)), minReplicas, maxReplicas)

With no finished request in the window yet the estimate holds the ready replica count (no
measurement, no opinion); with no arrivals it is `minReplicas`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Mapping

from .endpoint import Endpoint
from .errors import ConfigError
from .router import Decision
from .scheduling.config import parse_duration

__all__ = [
    "AutoscaleSpec",
    "Autoscaler",
    "Estimate",
    "PoolEstimator",
    "parse_autoscale_spec",
    "quantile",
]

#: p90 of the queueing delay over its mean (exponential tail: ln 10)
TAIL_FACTOR = math.log(10.0)
RHO_FLOOR = 0.05


@dataclass(frozen=True, slots=True)
class AutoscaleSpec:
    """The `autoscaling:` section of the serving config."""

    ttft_target: float = 1.0
    window: float = 60.0
    #: how far ahead to estimate the arrival rate: about a new replica's start-up time
    horizon: float = 60.0
    max_kv_utilization: float = 0.8
    min_replicas: int = 1
    max_replicas: int = 64
    #: finished-request samples kept per pool (the window's bound under heavy load)
    max_samples: int = 4096


_KEYS = {"ttftTarget": "ttft_target", "window": "window", "horizon": "horizon",
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
            if field in ("ttft_target", "window", "horizon"):
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
    if spec.ttft_target <= 0 or spec.window <= 0 or spec.horizon < 0:
        raise ConfigError("autoscaling: ttftTarget and window must be positive, horizon >= 0")
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
    #: uncached prompt tokens/s of the unqueued TTFT line (None: no slope measured)
    prefill_speed: float | None = None
    work: float = 0.0
    rho_max: float = 0.0
    ttft_replicas: float = 0.0
    kv_replicas: float = 0.0
    measured: bool = False


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    endpoint: str
    uncached: float
    output: int
    ttft: float | None
    decode: float
    #: the replica had no waiting request (scraped) when this one was sent
    unqueued: bool
    #: the replica's running requests (scraped) at this one's first token
    batch: int


def quantile(values: Iterable[float], q: float) -> float:
    """The `q` quantile of a non-empty sample (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True, slots=True)
class _Line:
    """Least squares y = mean_y + slope (x - mean_x); `sxx` the sum of squared deviations."""

    mean_x: float
    mean_y: float
    slope: float
    sxx: float

    def at(self, x: float) -> float:
        return self.mean_y + self.slope * (x - self.mean_x)


def _fit(points: list[tuple[float, float]]) -> _Line:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    return _Line(mx, my, slope, sxx)


class PoolEstimator:
    """The window of one pool's arrivals and finished requests."""

    def __init__(self, spec: AutoscaleSpec) -> None:
        self.spec = spec
        #: arrivals counted per whole second: (second, count), at most window + 1 entries
        self._arrivals: deque[list[float]] = deque()
        self._first_arrival: float | None = None
        self._samples: deque[_Sample] = deque(maxlen=spec.max_samples)
        self._kv_per_request = 0.0
        #: last fit of unqueued TTFT = a + b u (kept while every request queues)
        self._prefill: tuple[float, float] | None = None
        self._beta = 0.0

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
                 cached_tokens: int | None, output_tokens: int, ttft: float | None,
                 e2e: float, unqueued: bool = True, batch: int = 1,
                 hit_rate: float = 0.0) -> None:
        """A request served by `endpoint` is over; `ttft` None when not streamed (its first
        byte is its whole answer) and `cached_tokens` None when usage did not say."""
        if cached_tokens is None:
            uncached = prompt_tokens * (1.0 - hit_rate)
        else:
            uncached = max(0, prompt_tokens - cached_tokens)
        decode = max(0.0, e2e - ttft) if ttft is not None else 0.0
        self._samples.append(_Sample(now, endpoint, float(uncached), max(0, output_tokens),
                                     ttft, decode, unqueued, max(1, batch)))

    def _trim(self, now: float) -> None:
        horizon = now - self.spec.window
        while self._arrivals and self._arrivals[0][0] + 1 <= horizon:
            self._arrivals.popleft()
        while self._samples and self._samples[0].at < horizon:
            self._samples.popleft()

    def arrival_rate(self, now: float) -> float:
        """Mean arrivals/s over the window (or since the first arrival, if later)."""
        self._trim(now)
        if self._first_arrival is None:
            return 0.0
        span = min(self.spec.window, max(1.0, now - self._first_arrival))
        return sum(c for _, c in self._arrivals) / span

    def forecast_rate(self, now: float) -> float:
        """The arrival rate `horizon` seconds ahead, on the window's trend."""
        mean = self.arrival_rate(now)
        if mean == 0.0 or self._first_arrival is None:
            return mean
        start = max(now - self.spec.window, self._first_arrival)
        secs = math.floor(now) - math.floor(start)
        if secs < 10:  # too short a history for a trend
            return mean
        counts = {int(sec): c for sec, c in self._arrivals}
        first = math.floor(start)
        line = _fit([(t, counts.get(t, 0)) for t in range(first, first + secs)])
        return max(0.0, line.at(now + self.spec.horizon))

    def _prefill_fit(self, streamed: list[_Sample]) -> tuple[float, float] | None:
        """(a, b) of unqueued TTFT = a + b x uncached tokens; the last fit when no request
        of the window found the replica's queue empty."""
        pts = [(smp.uncached, smp.ttft) for smp in streamed if smp.unqueued]
        if len(pts) >= 3:
            line = _fit(pts)  # type: ignore[arg-type]
            # the lower envelope: refit on the requests at or under the line, those that
            # shared their prefill steps least with others (waiting 0 is not an idle replica)
            low = [(u, t) for u, t in pts if t <= line.at(u)]  # type: ignore[operator]
            if len(low) >= 3:
                line = _fit(low)  # type: ignore[arg-type]
                pts = low
            # a prompt-size spread of 16 tokens (a block) at least, and a rising line
            if line.sxx >= len(pts) * 16 ** 2 and line.slope > 0:
                self._prefill = (max(0.0, line.at(0.0)), line.slope)
            else:
                self._prefill = (quantile((t for _, t in pts), 0.5), 0.0)  # type: ignore[misc]
        elif pts and self._prefill is None:
            self._prefill = (quantile((t for _, t in pts), 0.5), 0.0)  # type: ignore[misc]
        return self._prefill

    def _decode_slope(self, streamed: list[_Sample]) -> float:
        """Seconds one more running sequence adds to a decode step (least squares of time per
        output token over the batch size); the last fit while the batch sizes are all alike."""
        pts = [(smp.batch, smp.decode / (smp.output - 1)) for smp in streamed if smp.output > 1]
        if len(pts) >= 8:
            line = _fit(pts)  # type: ignore[arg-type]
            if line.sxx >= len(pts):  # batch sizes spread by at least one sequence on average
                self._beta = max(0.0, line.slope)
        return self._beta

    def estimate(self, now: float, ready: Iterable[Endpoint]) -> Estimate:
        """Desired replicas at `now`, given the pool's ready endpoints (their scraped state)."""
        spec = self.spec
        ready = list(ready)
        if self.arrival_rate(now) == 0.0:
            return Estimate(desired=spec.min_replicas)
        lam = self.forecast_rate(now)
        streamed = [smp for smp in self._samples if smp.ttft is not None and smp.ttft > 0]
        fit = self._prefill_fit(streamed)
        if not streamed or fit is None:
            return Estimate(desired=self._clamp(max(1, len(ready))), arrival_rate=lam)
        n = len(self._samples)
        uncached = sum(smp.uncached for smp in self._samples) / n
        output = sum(smp.output for smp in self._samples) / n
        x = fit[0] + fit[1] * uncached
        work = x + output * self._decode_slope(streamed)
        decode = sum(smp.decode for smp in streamed) / len(streamed)
        slack = spec.ttft_target - x
        rho = 2 * slack / (2 * slack + TAIL_FACTOR * work) if slack > 0 else 0.0
        rho = max(RHO_FLOOR, rho)
        waiting = sum(ep.metrics.waiting for ep in ready)
        n_ttft = lam * work / rho + waiting * work / spec.window
        running = sum(ep.metrics.running for ep in ready)
        if running > 0:
            self._kv_per_request = sum(ep.metrics.kv_usage for ep in ready) / running
        n_kv = lam * (x + decode) * self._kv_per_request / spec.max_kv_utilization
        desired = self._clamp(math.ceil(max(n_ttft, n_kv) - 1e-9))
        return Estimate(desired=desired, arrival_rate=lam, unqueued_ttft=x, work=work,
                        prefill_speed=1 / fit[1] if fit[1] > 0 else None,
                        rho_max=rho, ttft_replicas=n_ttft, kv_replicas=n_kv, measured=True)

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

    def dispatched(self, decision: Decision, now: float) -> None:
        """Sent: an arrival the first time (not on a retry elsewhere)."""
        if decision.unqueued is None:
            self.pool(decision.pool.model).arrived(now)
        if decision.endpoint is not None:
            decision.unqueued = decision.endpoint.metrics.waiting == 0

    def first_token(self, decision: Decision, now: float) -> None:
        decision.first_token_at = now
        if decision.endpoint is not None:
            decision.batch_at_first_token = decision.endpoint.metrics.running

    def finished(self, decision: Decision, now: float, usage: Mapping[str, Any] | None) -> None:
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
        output = usage.get("completion_tokens")
        first = decision.first_token_at
        ttft = first - req.arrival_time if (first is not None and req.stream) else None
        self.pool(decision.pool.model).finished(
            ep.name, now, prompt_tokens=prompt, cached_tokens=cached,
            output_tokens=output if isinstance(output, int) else 0, ttft=ttft,
            e2e=now - req.arrival_time, unqueued=True if decision.unqueued is None else decision.unqueued,
            batch=1 if decision.batch_at_first_token is None else decision.batch_at_first_token,
            hit_rate=_hit_rate(decision.pool.pool) if cached is None else 0.0)

    def estimate(self, pool: str, now: float, ready: Iterable[Endpoint]) -> Estimate:
        return self.pool(pool).estimate(now, ready)
