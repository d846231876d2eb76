"""`latency-slo-scorer`: prefer endpoints predicted to meet the request's TTFT and TPOT targets.

A `core.latency_model.LatencyModel` per endpoint is trained online from what the gateway
sees: the endpoint's load when a request is sent there, the time its first token came back
(TTFT) and, at its end, (end - first token) / (output tokens - 1) (TPOT). Every decision
predicts both for each candidate.

Targets come per request in the headers `x-slo-ttft-ms` and `x-slo-tpot-ms` (the names of
llm-d's predicted-latency scheduling), or from `defaultTtftMs` / `defaultTpotMs` for the pool.
With a target, an endpoint predicted to meet every target scores 1 (the other scorers choose
among those) and one predicted to miss scores in (0, 0.5], less the further it misses, so with
this scorer's weight above twice the others' sum the scheduler always prefers an endpoint
predicted to meet them. When none is predicted
to, and the request is sheddable (negative priority, from its InferenceObjective), it is
refused with 429 `slo_unattainable` rather than sent to miss, once the model has checked
`minSamples` predictions (an untrained model never sheds). Without any target every endpoint
scores 1 (`scoreWithoutSlo: false`, the default: the other scorers decide and the model only
learns) or by predicted latency, TTFT + TPOT x output tokens (`scoreWithoutSlo: true`).

It reads the prompt tokens each endpoint holds from a prefix scorer (`MATCHED_TOKENS`), so a
config needs one (`prefix-cache-scorer`, `predictive-cost-scorer`...); `usePrefixMatch: false`
drops that need and counts the whole prompt as uncached. `latency_errors()` (the gateway's
`inferoute_latency_prediction_error_ratio` gauge) and `stats()` (printed by `bench sim`) report
the model's median absolute relative error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from ..endpoint import Endpoint, EndpointMetrics
from ..errors import TooManyRequests
from ..latency_model import (EndpointLoad, ErrorWindow, Features, LatencyModel, feature_rows,
                             pool_features, predict_pool, predict_ttfts)
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, DataKey, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from ..slo import TPOT_HEADER, TTFT_HEADER, slo_targets
from .common import BasePlugin, PluginParams
from .prefix_match import MATCHED_TOKENS

__all__ = ["LatencySloScorer", "slo_targets", "TPOT_HEADER", "TTFT_HEADER"]

#: requests followed from dispatch to end (bounded: the oldest are dropped past this)
MAX_TRACKED = 65_536


@dataclass(slots=True)
class _Load:
    """The gateway's own count of what is in flight on an endpoint."""

    prefill_tokens: float = 0.0
    running: int = 0
    context_tokens: float = 0.0


#: the load of an endpoint with nothing in flight (read-only)
_IDLE = _Load()


@dataclass(slots=True)
class _Tracked:
    endpoint: str
    sent_at: float
    uncached: float
    prompt_tokens: float
    x_ttft: Features
    x_tpot: Features
    ttft: float
    tpot: float
    #: the prediction was for the endpoint that served (not moved to a fallback)
    trained: bool = True
    first_token_at: float | None = None


class _Predictions:
    """One decision's candidates as the latency model sees them: their features and predicted
    TTFT and TPOT, made for all of them at once (`core.latency_model.feature_rows`) when the
    score needs them, only their TTFTs (`predict_ttfts`) when it needs no more, and for the
    chosen one only, in `on_scheduled`, whatever the decision did not make. What they read
    does not change in between: the load counts move only in this scorer's hooks, which run
    in order, and each candidate's scrape is kept as it was."""

    __slots__ = ("now", "prompt", "names", "matched", "metrics", "loads", "x_ttft", "x_tpot",
                 "ttft", "tpot")

    def __init__(self, now: float, prompt: float, names: list[str], matched: dict[str, int],
                 metrics: list[EndpointMetrics], loads: dict[str, _Load]) -> None:
        self.now, self.prompt, self.names, self.matched = now, prompt, names, matched
        self.metrics, self.loads = metrics, loads
        self.x_ttft: list[Features] = []
        self.x_tpot: list[Features] = []
        self.ttft: list[float] = []
        self.tpot: list[float] = []

    def _uncached(self, name: str) -> float:
        return max(0.0, self.prompt - self.matched.get(name, 0))

    def _load(self, i: int) -> EndpointLoad:
        own, m = self.loads.get(self.names[i]) or _IDLE, self.metrics[i]
        return EndpointLoad(own.prefill_tokens, own.running, own.context_tokens, m.waiting,
                            m.kv_usage)

    def predict(self, models: Sequence[LatencyModel]) -> None:
        """Every candidate's features and predictions (what `pool_features` and `predict_pool`
        give for their `EndpointLoad`s, built a column at a time)."""
        names, metrics, prompt, matched = self.names, self.metrics, self.prompt, self.matched.get
        get = self.loads.get
        own = [get(name) or _IDLE for name in names]
        self.x_ttft, self.x_tpot = feature_rows(
            [max(0.0, prompt - matched(name, 0)) for name in names],
            [load.prefill_tokens for load in own], [load.running for load in own],
            [load.context_tokens for load in own], [m.waiting for m in metrics],
            [m.kv_usage for m in metrics])
        self.ttft, self.tpot = predict_pool(models, self.x_ttft, self.x_tpot)

    def predict_ttft(self, models: Sequence[LatencyModel]) -> None:
        """Every candidate's TTFT alone (`predict_ttfts`: the values `predict` gives)."""
        names, metrics, prompt, matched = self.names, self.metrics, self.prompt, self.matched.get
        get = self.loads.get
        own = [get(name) or _IDLE for name in names]
        self.ttft = predict_ttfts(
            models, [max(0.0, prompt - matched(name, 0)) for name in names],
            [load.prefill_tokens for load in own], [load.running for load in own],
            [m.waiting for m in metrics])

    def tracked(self, name: str, model_of: Callable[[str], LatencyModel]) -> _Tracked | None:
        """The record that follows the request sent to `name` (None: not a candidate)."""
        if name not in self.names:
            return None
        i = self.names.index(name)
        uncached = self._uncached(name)
        if self.x_ttft:
            x_ttft, x_tpot = self.x_ttft[i], self.x_tpot[i]
            ttft, tpot = self.ttft[i], self.tpot[i]
        else:
            rows = pool_features((uncached,), (self._load(i),))
            x_ttft, x_tpot = rows[0][0], rows[1][0]
            # the same arithmetic as a decision's (`predict_pool`), to the last bit
            (ttft,), (tpot,) = predict_pool((model_of(name),), rows[0], rows[1])
            if self.ttft:  # the decision's own (the same value)
                ttft = self.ttft[i]
        return _Tracked(name, self.now, uncached, self.prompt, x_ttft, x_tpot, ttft, tpot)


@register
class LatencySloScorer(BasePlugin):
    """Predicted TTFT / TPOT against the request's targets (see module docstring)."""

    type_name = "latency-slo-scorer"
    metric_reads = MetricReads(fresh=("waiting", "kv_usage"))

    class Params(PluginParams):
        default_ttft_ms: float | None = pydantic.Field(
            None, gt=0, description="TTFT target of requests without an x-slo-ttft-ms header")
        default_tpot_ms: float | None = pydantic.Field(
            None, gt=0, description="TPOT target of requests without an x-slo-tpot-ms header")
        score_without_slo: bool = pydantic.Field(
            False, description="rank by predicted latency when a request has no target "
                               "(default: every endpoint scores 1)")
        shed: bool = pydantic.Field(
            True, description="refuse a sheddable request no endpoint is predicted to serve "
                              "within its targets (429)")
        min_samples: int = pydantic.Field(
            50, ge=0, description="TTFT checks before predictions may shed a request")
        use_prefix_match: bool = pydantic.Field(
            True, description="read the cached prompt tokens from a prefix scorer")
        forgetting: float = pydantic.Field(
            0.98, gt=0.0, le=1.0, description="per sample, of the older ones (memory about "
                                              "1 / (1 - forgetting) samples per endpoint)")
        error_window: int = pydantic.Field(512, ge=1, le=1_000_000)
        default_max_tokens: int = pydantic.Field(
            256, ge=1, description="output tokens assumed when a request sets no max_tokens")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        self.consumes: Sequence[DataKey[Any]] = (MATCHED_TOKENS,) if p.use_prefix_match else ()
        self._models: dict[str, LatencyModel] = {}
        #: the pool's prediction errors, every endpoint's checks together
        self.ttft_error = ErrorWindow(p.error_window)
        self.tpot_error = ErrorWindow(p.error_window)
        self._load: dict[str, _Load] = {}
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._key: DataKey[_Predictions] = DataKey(f"latency:{self.name}", _Predictions)
        #: requests refused because no endpoint was predicted to meet their targets
        self.shed_count = 0

    # -- prediction --------------------------------------------------------------------------
    def _model(self, name: str) -> LatencyModel:
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = LatencyModel(forgetting=self.params.forgetting)
        return model

    def _predict(self, ctx: CycleContext, request: InferenceRequest,
                 endpoints: list[Endpoint], *, predict: bool = True,
                 ttft_only: bool = False) -> _Predictions:
        """The candidates as the model sees them (predicted with `predict`: their TTFTs alone
        with `ttft_only`), kept in the cycle for `on_scheduled`."""
        matched = (ctx.get(MATCHED_TOKENS) or {}) if self.params.use_prefix_match else {}
        names = [ep.name for ep in endpoints]
        preds = _Predictions(ctx.now, float(request.prompt_tokens_estimate), names, matched,
                             [ep.metrics for ep in endpoints], self._load)
        if predict:
            known = self._models.get
            models = [known(name) or self._model(name) for name in names]
            if ttft_only:
                preds.predict_ttft(models)
            else:
                preds.predict(models)
        return ctx.put(self._key, preds)

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        p = self.params
        ttft_slo, tpot_slo = slo_targets(request, p.default_ttft_ms, p.default_tpot_ms)
        has_slo = ttft_slo is not None or tpot_slo is not None
        if not has_slo and not p.score_without_slo:
            # nothing to score: only the target's prediction is needed, for the training
            # hooks, and `on_scheduled` makes it (off the request's path)
            self._predict(ctx, request, endpoints, predict=False)
            return [1.0] * len(endpoints)
        # a TTFT target alone needs every candidate's TTFT, not its TPOT
        preds = self._predict(ctx, request, endpoints, ttft_only=has_slo and not tpot_slo)
        if not has_slo:
            out_tokens = request.max_tokens or p.default_max_tokens
            cost = [ttft + tpot * out_tokens for ttft, tpot in zip(preds.ttft, preds.tpot)]
            best = min(cost)
            return [best / c if c > 0 else 1.0 for c in cost]
        # the worst ratio of predicted to target: <= 1 meets every target (predictions are
        # never negative, so with one target it is that target's ratio)
        if not tpot_slo:
            ratio = [ttft / ttft_slo for ttft in preds.ttft] if ttft_slo else [0.0] * len(endpoints)
        elif not ttft_slo:
            ratio = [tpot / tpot_slo for tpot in preds.tpot]
        else:
            ratio = [max(ttft / ttft_slo, tpot / tpot_slo)
                     for ttft, tpot in zip(preds.ttft, preds.tpot)]
        if min(ratio) > 1.0:
            self._maybe_shed(request, preds, ratio, ttft_slo, tpot_slo)
        best_miss = min((r for r in ratio if r > 1.0), default=1.0)
        return [1.0 if r <= 1.0 else 0.5 * best_miss / r for r in ratio]

    def _maybe_shed(self, request: InferenceRequest, preds: _Predictions, ratio: list[float],
                    ttft_slo: float | None, tpot_slo: float | None) -> None:
        p = self.params
        if not p.shed or request.priority >= 0 or self.ttft_error.count < p.min_samples:
            return
        best = ratio.index(min(ratio))
        parts = []
        if ttft_slo:
            parts.append(f"TTFT {preds.ttft[best] * 1e3:.4g} ms against {ttft_slo * 1e3:.4g} ms")
        if tpot_slo:
            parts.append(f"TPOT {preds.tpot[best] * 1e3:.4g} ms against {tpot_slo * 1e3:.4g} ms")
        self.shed_count += 1
        raise TooManyRequests(
            "no endpoint is predicted to meet this request's latency objective (best: "
            + ", ".join(parts) + "); it is sheddable, so it was not sent",
            code="slo_unattainable", retry_after=1.0)

    # -- learning ----------------------------------------------------------------------------
    def _add(self, rec: _Tracked) -> None:
        load = self._load.setdefault(rec.endpoint, _Load())
        load.prefill_tokens += rec.uncached
        load.running += 1
        load.context_tokens += rec.prompt_tokens

    def _drop_prefill(self, rec: _Tracked) -> None:
        load = self._load.get(rec.endpoint)
        if load is not None:
            load.prefill_tokens = max(0.0, load.prefill_tokens - rec.uncached)

    def _remove(self, rec: _Tracked) -> None:
        if rec.first_token_at is None:
            self._drop_prefill(rec)
        load = self._load.get(rec.endpoint)
        if load is not None:
            load.running = max(0, load.running - 1)
            load.context_tokens = max(0.0, load.context_tokens - rec.prompt_tokens)

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        preds = ctx.get(self._key)
        rec = preds.tracked(result.target.name, self._model) if preds else None
        if rec is None:  # this scorer did not run in the primary profile
            return
        self._add(rec)
        self._tracked[request.request_id] = rec
        while len(self._tracked) > MAX_TRACKED:
            self._remove(self._tracked.popitem(last=False)[1])

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._tracked.get(request.request_id)
        if rec is None or rec.endpoint == endpoint.name:
            return
        # a fallback served it: move its load there; the prediction was for another endpoint
        self._remove(rec)
        rec.endpoint, rec.trained, rec.sent_at = endpoint.name, False, now
        self._add(rec)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._tracked.get(request.request_id)
        if rec is None or rec.first_token_at is not None:
            return
        rec.first_token_at = now
        self._drop_prefill(rec)
        if rec.trained:
            self.ttft_error.add(rec.ttft, now - rec.sent_at)
            self._model(rec.endpoint).observe_ttft(rec.x_ttft, now - rec.sent_at)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        rec = self._tracked.pop(request.request_id, None)
        if rec is None:
            return
        self._remove(rec)
        tokens = (usage or {}).get("completion_tokens")
        if (rec.trained and rec.first_token_at is not None and isinstance(tokens, int)
                and tokens >= 2):
            tpot = (now - rec.first_token_at) / (tokens - 1)
            self.tpot_error.add(rec.tpot, tpot)
            self._model(rec.endpoint).observe_tpot(rec.x_tpot, tpot)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._load.pop(endpoint.name, None)
        self._models.pop(endpoint.name, None)
        for rid in [r for r, rec in self._tracked.items() if rec.endpoint == endpoint.name]:
            del self._tracked[rid]

    # -- reporting ---------------------------------------------------------------------------
    def latency_errors(self) -> dict[str, float | None]:
        """Median absolute relative error of the last checked TTFT and TPOT predictions."""
        return {"ttft": self.ttft_error.median(), "tpot": self.tpot_error.median()}

    def stats(self) -> dict[str, Any]:
        return {"ttft_error": self.ttft_error.median(), "tpot_error": self.tpot_error.median(),
                "ttft_error_first": self.ttft_error.first_median(),
                "tpot_error_first": self.tpot_error.first_median(),
                "ttft_checks": self.ttft_error.count, "tpot_checks": self.tpot_error.count,
                "window": self.ttft_error.errors.maxlen, "shed": self.shed_count}
