"""Autoscaling in virtual time: a HorizontalPodAutoscaler scales the simulated pool under a load
that rises and falls, on (a) the seed's rule, the pool's mean KV-cache utilisation, or (b)
`inferoute_pool_desired_replicas`.

- the load: a shape between a base and a peak rate over `duration` seconds (`ShapedLoad`: a
  day, rate(t) = base + (peak - base)(1 - cos(2 pi t / duration)) / 2; a spike; a step),
  Poisson arrivals (the count fixed by the mean rate, the times drawn from the shape); or a
  trace's own requests at their own times (`bench/traces.py`);
- the HPA: Kubernetes' algorithm (autoscaling/v2, default behavior): every 15 s, a proposal
  from the External metric (Value target: ceil(ready x value / target); AverageValue target:
  ceil(value / target)), unchanged within the 10% tolerance; scale-up at most max(4 pods,
  100%) per 15 s; scale-down to the highest proposal of the last 300 s; min/max replicas. The
  metric is read fresh at each sync (no Prometheus or adapter lag, for either rule);
- a replica the HPA adds serves after `cold_start` seconds, and costs from the moment it is
  asked for; one it removes (a starting one first, else the newest) takes no new request and
  costs until its last request is over.

Replica-seconds, TTFT p90 and the requests over the TTFT target come from one run per rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np

from ..core.autoscale import DEFAULT_RATE_QUANTILE, Autoscaler, AutoscaleSpec
from .des import SimConfig, VirtualBench
from .load import LoadSpec, Stage
from .workloads import Workload

RuleKind = Literal["kv", "gauge"]

#: the HPA's sync period, tolerance and default behavior (Kubernetes autoscaling/v2)
SYNC_PERIOD = 15.0
TOLERANCE = 0.1
SCALE_DOWN_WINDOW = 300.0
SCALE_UP_PODS = 4
DRAIN_CHECK = 1.0


ShapeKind = Literal["day", "spike", "step"]
SHAPES: tuple[ShapeKind, ...] = ("day", "spike", "step")


@dataclass(slots=True)
class ShapedLoad(LoadSpec):
    """One stage whose Poisson arrival rate follows a shape between `base` and `peak`:

    - `day`: rises from base to peak and falls back, base + (peak - base)(1 - cos 2 pi t/d)/2;
    - `spike`: base, then peak from 30% to 50% of the duration (a burst), then base;
    - `step`: base for the first quarter, then peak to the end.

    With a `warmup`, the base rate runs that many seconds first and the shape follows (a day
    that starts from the night before, not from an empty pool). The count is fixed by the
    mean rate; the times are drawn from the shape."""

    base: float = 1.0
    peak: float = 10.0
    shape: ShapeKind = "day"
    warmup: float = 0.0

    @classmethod
    def make(cls, base: float, peak: float, duration: float, seed: int = 0,
             shape: ShapeKind = "day", warmup: float = 0.0) -> ShapedLoad:
        if shape not in SHAPES:
            raise ValueError(f"unknown load shape {shape!r}; choose one of {', '.join(SHAPES)}")
        if not 0 <= base <= peak or peak <= 0 or duration <= 0 or warmup < 0:
            raise ValueError("a load shape needs 0 <= base <= peak, peak > 0, duration > 0, "
                             "warmup >= 0")
        mean = {"day": (base + peak) / 2, "spike": 0.8 * base + 0.2 * peak,
                "step": 0.25 * base + 0.75 * peak}[shape]
        mean = (mean * duration + base * warmup) / (duration + warmup)
        return cls(stages=[Stage(duration=duration + warmup, rate=mean)], seed=seed, base=base,
                   peak=peak, shape=shape, warmup=warmup)

    def rate(self, t: float) -> float:
        if t < self.warmup:
            return self.base
        t -= self.warmup
        d = self.stages[0].duration - self.warmup
        if self.shape == "spike":
            return self.peak if 0.3 * d <= t < 0.5 * d else self.base
        if self.shape == "step":
            return self.peak if t >= 0.25 * d else self.base
        return self.base + (self.peak - self.base) * (1 - math.cos(2 * math.pi * t / d)) / 2

    def rate_at(self, t: float) -> float:
        """The arrival rate at `t` on the run's clock: the shape's within the load, 0 after."""
        return self.rate(t) if 0 <= t < self.stages[0].duration else 0.0

    def arrivals(self, index: int) -> list[float]:
        stage = self.stages[index]
        n, d = stage.count, stage.duration
        grid = np.linspace(0.0, d, 4097)
        cum = np.concatenate(([0.0], np.cumsum([self.rate(t) for t in grid[1:]])))
        cum /= cum[-1]
        rng = np.random.default_rng([self.seed, index])
        return sorted(np.interp(rng.uniform(size=n), cum, grid).tolist())


#: seconds around a time over which a trace's arrivals are counted for its rate then
TRACE_RATE_WINDOW = 60.0


def true_rate(load: LoadSpec) -> Callable[[float], float]:
    """The load's arrival rate at a time of the run (0 after it): a shape's own; a trace has
    none, so its arrivals per second over the `TRACE_RATE_WINDOW` seconds around the time
    (what a forecast that knew the next 30 s would read). Other loads are refused: their
    stages follow each other as their requests finish, not on a clock."""
    if isinstance(load, ShapedLoad):
        return load.rate_at
    if load.kind != "trace":
        raise ValueError("an autoscaled run takes a shaped load (day, spike, step) or a trace")
    times = np.asarray(load.arrivals(0))
    half = TRACE_RATE_WINDOW / 2

    def rate(t: float) -> float:
        lo, hi = max(0.0, t - half), t + half
        return float(np.searchsorted(times, hi) - np.searchsorted(times, lo)) / (hi - lo)
    return rate


class HorizontalPodAutoscaler:
    """Kubernetes' replica calculation for one External metric, sans-I/O."""

    def __init__(self, min_replicas: int, max_replicas: int, target: float,
                 target_type: Literal["Value", "AverageValue"],
                 scale_down_window: float = SCALE_DOWN_WINDOW) -> None:
        self.min, self.max = min_replicas, max_replicas
        self.scale_down_window = scale_down_window
        self.target, self.target_type = target, target_type
        self._proposals: list[tuple[float, int]] = []

    def proposal(self, current: int, ready: int, value: float) -> int:
        if self.target_type == "AverageValue":
            ratio = value / (self.target * max(current, 1))
            return current if abs(1 - ratio) <= TOLERANCE else math.ceil(value / self.target)
        ratio = value / self.target
        return current if abs(1 - ratio) <= TOLERANCE else math.ceil(ratio * ready)

    def recommend(self, now: float, current: int, ready: int, value: float) -> int:
        """The replicas to run after this sync (stabilised, rate-limited, clamped)."""
        p = self.proposal(current, ready, value)
        self._proposals.append((now, p))
        self._proposals = [(t, q) for t, q in self._proposals
                           if t > now - self.scale_down_window]
        want = p
        if want < current:  # scale down only as far as the last window's highest proposal
            want = min(current, max(q for _, q in self._proposals))
        if want > current:
            want = min(want, max(current + SCALE_UP_PODS, 2 * current))
        return max(self.min, min(self.max, want))


@dataclass(slots=True)
class Replica:
    name: str | None
    asked: float
    ready_at: float | None = None
    removed: float | None = None
    gone: float | None = None


@dataclass(slots=True)
class AutoscaleConfig:
    """One autoscaled run."""

    rule: RuleKind
    workload: Workload
    #: a `ShapedLoad` or a trace's (`bench/traces.py`)
    load: LoadSpec
    profile: str = "qwen3-32b-2xh100"
    policy: str = "inferoute"
    model: str = "model"
    seed: int = 0
    #: KV rule: the pool's mean KV utilisation the HPA holds (Value target)
    kv_target: float = 0.5
    ttft_target: float = 1.0
    cold_start: float = 60.0
    min_replicas: int = 1
    max_replicas: int = 16
    initial_replicas: int = 1
    #: the HPA's scale-down stabilization window (behavior.scaleDown), seconds
    scale_down_window: float = SCALE_DOWN_WINDOW
    #: gauge: the quantile of its forecast rate it sizes for (`rateQuantile`)
    rate_quantile: float = DEFAULT_RATE_QUANTILE
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    #: seconds of the run not scored: the load's warm-up (`ShapedLoad.warmup`; a trace's
    #: first seconds)
    scored_from: float = 0.0
    #: the clients stream their answers (False: whole answers, no first token for the gauge)
    stream: bool = True


class Sync(NamedTuple):
    """One HPA sync: what it asked for, what served, the metric it read; for the gauge, the
    arrival rate its estimator forecast, next to the load's true rate then and `horizon`
    seconds on (what a perfect forecast would have read), so a run shows where the forecast
    erred."""

    t: float
    asked: int
    ready: int
    metric: float
    #: the estimator's forecast rate (req/s; NaN for the KV rule)
    forecast: float
    #: the load's true rate at t and at t + the gauge's horizon (cold start + one sync); a
    #: trace's: its arrivals per second over the minute around the time (`true_rate`)
    rate: float
    rate_ahead: float


@dataclass(slots=True)
class AutoscaleResult:
    rule: str
    kv_target: float | None
    replica_seconds: float
    requests: int
    failed: int
    ttft_p90: float
    ttft_p50: float
    over_target: int
    peak_replicas: int
    virtual_seconds: float
    wall_seconds: float
    #: every HPA sync
    timeline: list[Sync] = field(repr=False, default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"rule": self.rule, "kv_target": self.kv_target,
                "replica_seconds": round(self.replica_seconds, 1), "requests": self.requests,
                "failed": self.failed, "ttft_p50": round(self.ttft_p50, 4),
                "ttft_p90": round(self.ttft_p90, 4), "over_target": self.over_target,
                "peak_replicas": self.peak_replicas}


class AutoscaledBench:
    """A `VirtualBench` whose replicas an HPA adds and removes."""

    def __init__(self, cfg: AutoscaleConfig) -> None:
        self.cfg = cfg
        self.bench = VirtualBench(SimConfig(
            policy=cfg.policy, replicas=cfg.initial_replicas, profile=cfg.profile,
            workload=cfg.workload, load=cfg.load, model=cfg.model, seed=cfg.seed,
            profile_overrides=dict(cfg.profile_overrides), stream=cfg.stream))
        self.replicas = [Replica(ep.name, 0.0, ready_at=0.0) for ep in self.bench.endpoints]
        self.estimator: Autoscaler | None = None
        if cfg.rule == "gauge":
            # the count asked for now must hold from when its replicas serve (cold start)
            # to when the HPA can correct it (one sync later)
            self.estimator = Autoscaler(AutoscaleSpec(
                ttft_target=cfg.ttft_target, min_replicas=cfg.min_replicas,
                max_replicas=cfg.max_replicas, horizon=cfg.cold_start + SYNC_PERIOD,
                rate_quantile=cfg.rate_quantile, cold_start=cfg.cold_start))
            self.bench.router.listeners.append(self.estimator)
            self.hpa = HorizontalPodAutoscaler(cfg.min_replicas, cfg.max_replicas, 1.0,
                                               "AverageValue", cfg.scale_down_window)
        else:
            self.hpa = HorizontalPodAutoscaler(cfg.min_replicas, cfg.max_replicas,
                                               cfg.kv_target, "Value", cfg.scale_down_window)
        self.timeline: list[Sync] = []
        self._rate = true_rate(cfg.load)

    # -- what the HPA reads -----------------------------------------------------------------

    def _serving(self) -> list[Any]:
        return self.bench.router.pools[self.cfg.model].pool.endpoints()

    def metric(self, now: float) -> tuple[float, float]:
        """The metric's value, and the gauge's forecast arrival rate (NaN for the KV rule)."""
        ready = self._serving()
        if self.estimator is not None:
            starting = [r.asked for r in self._active() if r.ready_at is None]
            est = self.estimator.estimate(self.cfg.model, now, ready, starting)
            return est.gauge, est.arrival_rate
        kv = sum(ep.metrics.kv_usage for ep in ready) / len(ready) if ready else 0.0
        return kv, math.nan

    # -- the loop ---------------------------------------------------------------------------

    def _active(self) -> list[Replica]:
        return [r for r in self.replicas if r.removed is None]

    def _sync(self, now: float) -> None:
        active = self._active()
        ready = sum(1 for r in active if r.ready_at is not None)
        value, forecast = self.metric(now)
        want = self.hpa.recommend(now, len(active), ready, value)
        self.timeline.append(Sync(now, want, ready, value, forecast, self._rate(now),
                                  self._rate(now + self.cfg.cold_start + SYNC_PERIOD)))
        for _ in range(want - len(active)):
            rep = Replica(None, now)
            self.replicas.append(rep)
            self.bench.call_at(now + self.cfg.cold_start, partial(self._ready, rep))
        if want < len(active):  # starting replicas first, then the newest
            order = sorted(active, key=lambda r: (r.ready_at is not None, -r.asked))
            for rep in order[:len(active) - want]:
                rep.removed = now
                if rep.name is None:
                    rep.gone = now
                else:
                    self.bench.remove_replica(rep.name)
        self.bench.call_at(now + SYNC_PERIOD, self._sync)

    def _ready(self, rep: Replica, now: float) -> None:
        if rep.removed is not None:  # cancelled while starting
            return
        rep.ready_at = now
        rep.name = self.bench.add_replica(now).name

    def _drain_check(self, now: float) -> None:
        for rep in self.replicas:
            if rep.removed is not None and rep.gone is None and rep.name is not None \
                    and self.bench.drained(rep.name):
                rep.gone = now
        self.bench.call_at(now + DRAIN_CHECK, self._drain_check)

    def run(self) -> AutoscaleResult:
        self.bench.call_at(SYNC_PERIOD, self._sync)
        self.bench.call_at(DRAIN_CHECK, self._drain_check)
        result = self.bench.run()
        end = result.virtual_seconds
        start = self.cfg.scored_from  # a warm-up's requests and replica-seconds do not count
        replica_seconds = sum(max(0.0, (r.gone if r.gone is not None else end)
                                  - max(r.asked, start)) for r in self.replicas)
        records = [rec for stage in result.records for rec in stage if rec.start >= start]
        ttfts = np.array([rec.ttft for rec in records if rec.ok and rec.ttft is not None])
        failed = sum(1 for rec in records if not rec.ok)
        over = int((ttfts > self.cfg.ttft_target).sum()) + failed
        peak = max((s.asked for s in self.timeline if s.t >= start),
                   default=self.cfg.initial_replicas)
        return AutoscaleResult(
            rule=self.cfg.rule, kv_target=self.cfg.kv_target if self.cfg.rule == "kv" else None,
            replica_seconds=replica_seconds, requests=len(records), failed=failed,
            ttft_p90=float(np.percentile(ttfts, 90)) if len(ttfts) else math.nan,
            ttft_p50=float(np.percentile(ttfts, 50)) if len(ttfts) else math.nan,
            over_target=over, peak_replicas=peak, virtual_seconds=end,
            wall_seconds=result.wall_seconds, timeline=self.timeline)


def run_autoscaled(cfg: AutoscaleConfig) -> AutoscaleResult:
    """One run of the pool under `cfg.rule`."""
    return AutoscaledBench(cfg).run()
