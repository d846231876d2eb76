"""`prefix-cache-affinity-filter` (llm-d): keep the endpoints that hold most of the prompt
unless they are far busier.

Endpoints whose prefix score (the fraction of the prompt's blocks the scorer named by
`prefixScorerRef` finds there) is at least `affinityThreshold` (0.80) are *sticky*; when there
are any, only they stay, unless the best sticky endpoint has more than
`maxTokensInFlightPenalty` (286,720: 18 s of prefill at 15,928 tokens/s, llm-d's figure for
Qwen3-32B on 2 x H100; 0 never breaks stickiness) tokens in flight more than the best other
endpoint; then, and with probability `explorationProbability` (0.01), every endpoint stays.
llm-d's time form of the gate, `maxTTFTPenaltyMs` over tokens in flight /
`peakPrefillThroughput`, is accepted too; the smaller of the two gates applies.

`prefixScorerRef` (llm-d: `prefixMatchInfoProducerName`) defaults to the one prefix scorer
configured, so llm-d's own optimized-baseline config (with its `approx-prefix-cache-producer`)
loads unchanged. Tokens in flight come from the `inflight-load-producer` named by
`inFlightLoadProducerName`.
"""

from __future__ import annotations

from typing import Any

import pydantic

from ..endpoint import Endpoint
from ..errors import ConfigError
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, Scorer
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import PluginParams, bound_plugin
from .inflight_load_producer import ReadsInFlightLoad
from .prefix_match import LookupStats

__all__ = ["PrefixCacheAffinityFilter"]


@register
class PrefixCacheAffinityFilter(ReadsInFlightLoad):
    """Keep the endpoints that hold most of the prompt unless they are far busier (llm-d's
    `prefix-cache-affinity-filter`; see the module docstring)."""

    type_name = "prefix-cache-affinity-filter"
    metric_reads = MetricReads()

    class Params(PluginParams):
        prefix_scorer_ref: str | None = pydantic.Field(
            None, min_length=1, validation_alias=pydantic.AliasChoices(
                "prefixScorerRef", "prefixMatchInfoProducerName", "prefix_scorer_ref"),
            description="default: the one prefix scorer configured")
        in_flight_load_producer_name: str = pydantic.Field("inflight-load-producer", min_length=1)
        affinity_threshold: float = pydantic.Field(0.80, gt=0.0, le=1.0)
        exploration_probability: float = pydantic.Field(0.01, ge=0.0, le=1.0)
        max_tokens_in_flight_penalty: int = pydantic.Field(
            286_720, ge=0, description="0: this gate never breaks stickiness")
        max_ttft_penalty_ms: float = pydantic.Field(
            0.0, ge=0.0, validation_alias=pydantic.AliasChoices(
                "maxTTFTPenaltyMs", "max_ttft_penalty_ms"),
            description="a second gate: tokens in flight / peakPrefillThroughput, in ms")
        peak_prefill_throughput: float = pydantic.Field(15_928.0, gt=0.0)

    prefix: Scorer

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        gates = [float(p.max_tokens_in_flight_penalty),
                 p.max_ttft_penalty_ms * p.peak_prefill_throughput / 1000.0]
        #: the in-flight token gap past which stickiness breaks (0: never)
        self.penalty_tokens = min((g for g in gates if g > 0), default=0.0)

    def bind(self, plugins: dict[str, Any]) -> None:
        super().bind(plugins)
        ref = self.params.prefix_scorer_ref
        if ref is None:
            found = [n for n, pl in plugins.items()
                     if isinstance(pl, LookupStats) and isinstance(pl, Scorer)]
            if len(found) != 1:
                raise ConfigError(f"{self.type_name} {self.name!r}: set prefixScorerRef; "
                                  f"{len(found)} prefix scorers are configured")
            ref = found[0]
        self.prefix = bound_plugin(self, plugins, ref, Scorer, "prefixScorerRef")

    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        if len(endpoints) <= 1:
            return endpoints
        # scored before the exploration draw, so the match is known for every request (the
        # producer's `prefill` accounting reads it), as llm-d's prefix producer always runs
        scores = self.prefix.score(ctx, request, endpoints)
        if ctx.rng.random() < p.exploration_probability:
            return endpoints
        sticky = [ep for ep, s in zip(endpoints, scores) if s >= p.affinity_threshold]
        if not sticky or len(sticky) == len(endpoints):
            return endpoints
        penalty = self.penalty_tokens
        if penalty > 0:
            others = [ep for ep, s in zip(endpoints, scores) if s < p.affinity_threshold]
            best_sticky = min(self.load.tokens(ep) for ep in sticky)
            if best_sticky - min(self.load.tokens(ep) for ep in others) > penalty:
                return endpoints
        return sticky
