"""An online-trained model of a request's TTFT and time per output token (TPOT) on an endpoint.

Sans-I/O and numpy only. Each target is a linear model over a few features of the endpoint's
state at dispatch, fitted by recursive least squares of the relative error (each sample
weighted by 1 / its value: the figure reported is a relative error too) with exponential
forgetting. An update or a prediction is O(f^2) in the number of features f (six), whatever
the number of requests seen, so it sits on the scheduler's hot path. The features are the
gateway's own bookkeeping (never stale) plus the last scrape:

- TTFT: the prompt tokens the endpoint must compute (not cached there), the prefill tokens
  already queued there (requests sent, first token not back), their sum times the running
  batch (a prefill chunk's step slows with the batch), the running batch, the scraped waiting
  queue; seconds.
- TPOT: the running batch, the context it attends to, the prefill tokens queued there (prefill
  chunks interleave with decode steps), the scraped KV-cache use; seconds per token.

`ErrorWindow` keeps the absolute relative error of the last predictions that were checked
against what happened, for the median the gateway exports and the benchmark prints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import mul
from typing import NamedTuple

import numpy as np

__all__ = ["EndpointLoad", "ErrorWindow", "Features", "feature_rows", "LatencyModel",
           "pool_features", "predict_pool", "predict_ttfts", "RecursiveLeastSquares",
           "tpot_features", "ttft_features"]

#: a model's inputs, a few floats: a tuple, not an array, as a decision predicts for every
#: candidate and numpy's per-call cost exceeds a six-term dot product's in Python
Features = tuple[float, ...]


class RecursiveLeastSquares:
    """Linear regression fitted online: y ~ theta . x, newest samples weighted most.

    `forgetting` (lambda < 1) discounts a sample by lambda per later update, so the fit follows
    an endpoint whose behaviour drifts (an effective memory of 1 / (1 - lambda) samples). The
    covariance's trace is capped so features that stay constant (no information) cannot wind
    it up while the forgetting inflates it.
    """

    def __init__(self, features: int, *, forgetting: float = 0.998, prior: float = 100.0,
                 max_trace: float = 1e6) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError("forgetting must be in (0, 1]")
        self.theta = np.zeros(features)
        #: `theta` as floats, for predictions
        self.coef: Features = (0.0,) * features
        self.p = np.eye(features) * prior
        self.forgetting = forgetting
        self.max_trace = max_trace
        self.samples = 0

    def predict(self, x: Sequence[float]) -> float:
        return float(sum(map(mul, self.coef, x)))

    def update(self, features: Sequence[float], y: float, weight: float = 1.0) -> None:
        """Fold in one observation `y` of `features`; the sample's residual counts
        `weight` times (1 / y: least squares of the relative error)."""
        x = np.asarray(features, dtype=float)
        if weight != 1.0:
            x, y = x * weight, y * weight
        px = self.p @ x
        gain = px / (self.forgetting + x @ px)
        self.theta += gain * (y - self.theta @ x)
        self.p = (self.p - np.outer(gain, px)) / self.forgetting
        trace = np.trace(self.p)
        if trace > self.max_trace:
            self.p *= self.max_trace / trace
        self.coef = tuple(self.theta.tolist())
        self.samples += 1


class ErrorWindow:
    """Absolute relative errors |predicted - actual| / actual of the last `size` checks, and of
    the first `size` (what the model did before it had learnt: `first_median`)."""

    def __init__(self, size: int = 512) -> None:
        self.errors: deque[float] = deque(maxlen=size)
        self.first: list[float] = []
        self.count = 0

    def add(self, predicted: float, actual: float) -> None:
        if actual > 0.0:
            err = abs(predicted - actual) / actual
            self.errors.append(err)
            if len(self.first) < (self.errors.maxlen or 0):
                self.first.append(err)
            self.count += 1

    def median(self) -> float | None:
        """The median over the last `size` checks (None before the first check)."""
        return float(np.median(self.errors)) if self.errors else None

    def first_median(self) -> float | None:
        """The median over the first `size` checks."""
        return float(np.median(self.first)) if self.first else None


class EndpointLoad(NamedTuple):
    """What the model reads about an endpoint at dispatch (see the module docstring); a named
    tuple: one is made per candidate per decision."""

    #: prompt tokens sent there whose first token has not come back (queued or prefilling)
    queued_prefill_tokens: float
    #: requests in flight there (the running batch, as the gateway counts it)
    running: int
    #: prompt tokens of the requests in flight there (the context decode steps attend to)
    context_tokens: float
    #: scraped: requests waiting in the engine's queue, KV-cache use (0-1)
    waiting: int = 0
    kv_usage: float = 0.0


def feature_rows(uncached_tokens: Sequence[float], queued_prefill_tokens: Sequence[float],
                 running: Sequence[int], context_tokens: Sequence[float],
                 waiting: Sequence[int], kv_usage: Sequence[float],
                 ) -> tuple[list[Features], list[Features]]:
    """The TTFT and the TPOT model's features of several endpoints, a row each (scaled to
    order 1 at typical loads), from one sequence per `EndpointLoad` field: the one place the
    features are defined. Columns, not a record per endpoint: a decision builds them for every
    candidate, and a comprehension per column costs a fraction of a loop over records."""
    batch = [r / 64.0 for r in running]
    own = [u / 1000.0 for u in uncached_tokens]
    ahead = [q / 1000.0 for q in queued_prefill_tokens]
    x_ttft: list[Features] = [(1.0, o, a, (o + a) * b, b, w / 8.0)
                              for o, a, b, w in zip(own, ahead, batch, waiting)]
    x_tpot: list[Features] = [(1.0, b, c / 100_000.0, q / 10_000.0, kv) for b, c, q, kv
                              in zip(batch, context_tokens, queued_prefill_tokens, kv_usage)]
    return x_ttft, x_tpot


def pool_features(uncached_tokens: Sequence[float],
                  loads: Sequence[EndpointLoad]) -> tuple[list[Features], list[Features]]:
    """`feature_rows` of endpoints described by their `EndpointLoad`s."""
    return feature_rows(uncached_tokens, *zip(*loads)) if loads else ([], [])


def ttft_features(uncached_tokens: float, load: EndpointLoad) -> Features:
    """One endpoint's TTFT features (`pool_features`)."""
    return pool_features((uncached_tokens,), (load,))[0][0]


def tpot_features(load: EndpointLoad) -> Features:
    """One endpoint's TPOT features (`pool_features`)."""
    return pool_features((0.0,), (load,))[1][0]


class LatencyModel:
    """The TTFT and TPOT predictors of one endpoint (each replica learns its own: pools may mix
    hardware, and a replica's state is what its own history explains)."""

    def __init__(self, *, forgetting: float = 0.998) -> None:
        self.ttft = RecursiveLeastSquares(6, forgetting=forgetting)
        self.tpot = RecursiveLeastSquares(5, forgetting=forgetting)

    def predict(self, x_ttft: Features, x_tpot: Features) -> tuple[float, float]:
        """Predicted (TTFT, TPOT) in seconds, never negative, for the features of
        `ttft_features` and `tpot_features`."""
        return max(0.0, self.ttft.predict(x_ttft)), max(0.0, self.tpot.predict(x_tpot))

    def observe_ttft(self, features: Features, actual: float) -> None:
        """A first token came `actual` seconds after dispatch."""
        self.ttft.update(features, actual, 1.0 / max(actual, 1e-3))

    def observe_tpot(self, features: Features, actual: float) -> None:
        """A request's output came `actual` seconds a token after its first."""
        self.tpot.update(features, actual, 1.0 / max(actual, 1e-4))


def predict_pool(models: Sequence[LatencyModel], x_ttft: Sequence[Features],
                 x_tpot: Sequence[Features]) -> tuple[list[float], list[float]]:
    """Predicted TTFTs and TPOTs (seconds, never negative) of endpoints whose models are
    `models`, from their rows of `feature_rows`. The dot products are written out for the
    models' six and five features: a third of the cost of `sum(map(mul, ...))` per row, and
    the same sum, term by term from the first (Python 3.11's `sum` of floats; 3.12's
    compensates and may differ in the last bit)."""
    ttft: list[float] = []
    tpot: list[float] = []
    for m, (x0, x1, x2, x3, x4, x5), (y0, y1, y2, y3, y4) in zip(models, x_ttft, x_tpot):
        c0, c1, c2, c3, c4, c5 = m.ttft.coef
        v = c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3 + c4 * x4 + c5 * x5
        ttft.append(v if v > 0.0 else 0.0)
        d0, d1, d2, d3, d4 = m.tpot.coef
        v = d0 * y0 + d1 * y1 + d2 * y2 + d3 * y3 + d4 * y4
        tpot.append(v if v > 0.0 else 0.0)
    return ttft, tpot


def predict_ttfts(models: Sequence[LatencyModel], uncached_tokens: Sequence[float],
                  queued_prefill_tokens: Sequence[float], running: Sequence[int],
                  waiting: Sequence[int]) -> list[float]:
    """The TTFTs `predict_pool` gives from `feature_rows`' TTFT features, without building the
    rows or predicting TPOT: what a decision with only a TTFT target reads, for every
    candidate. The same operations on the same values in the same order, so the same floats
    (a unit test holds the two to each other, bit for bit)."""
    out: list[float] = []
    for m, u, q, r, w in zip(models, uncached_tokens, queued_prefill_tokens, running, waiting):
        c0, c1, c2, c3, c4, c5 = m.ttft.coef
        o, a, b = u / 1000.0, q / 1000.0, r / 64.0
        v = c0 * 1.0 + c1 * o + c2 * a + c3 * ((o + a) * b) + c4 * b + c5 * (w / 8.0)
        out.append(v if v > 0.0 else 0.0)
    return out
