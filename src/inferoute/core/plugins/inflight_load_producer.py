"""Tokens in flight: llm-d's `inflight-load-producer`, `token-load-scorer` and
`prefix-cache-affinity-filter`.

The plugins of llm-d's optimized-baseline router profile (its guides' default from llm-d v0.8
on: the affinity filter, then the token-load scorer) read one signal, the tokens of the requests
this gateway sent each endpoint, kept by an `inflight-load-producer` (gateway bookkeeping, never
stale). Its `accounting` is one of llm-d's two versions:

- `request` (the default; the producer of `llm-d-inference-scheduler`, before that repository
  became `llm-d-router`): a request counts its estimated prompt tokens plus 1.5 times as many
  output tokens, from dispatch to its end (the router's own per-endpoint count of prompt
  tokens in flight, scaled), so the count follows everything in flight;
- `prefill` (the later `llm-d-router` producer, without `addEstimatedOutputTokens`): a request
  counts the prompt tokens the chosen endpoint must compute (its prompt minus the leading tokens
  a prefix-cache scorer matched there in the cycle) until its first response bytes (the prefill
  is over; `on_first_token`) or its end, so the count is the prefill queue (its own count, at
  most 65,536 requests: the oldest are forgotten).

- `token-load-scorer`: `1 - min(tokens, queueThresholdTokens) / queueThresholdTokens`
  (4,194,304 by default: 128 requests of 32k tokens).
- `prefix-cache-affinity-filter`: endpoints whose prefix score (the fraction of the prompt's
  blocks the scorer named by `prefixScorerRef` finds there) is at least `affinityThreshold`
  (0.80) are *sticky*; when there are any, only they stay, unless the best sticky endpoint has
  more than `maxTokensInFlightPenalty` (286,720: 18 s of prefill at 15,928 tokens/s, llm-d's
  figure for Qwen3-32B on 2 x H100; 0 never breaks stickiness) tokens in flight more than the
  best other endpoint; then, and with probability `explorationProbability` (0.01), every
  endpoint stays. llm-d's time form of the gate, `maxTTFTPenaltyMs` over tokens in flight /
  `peakPrefillThroughput`, is accepted too; the smaller of the two gates applies.

The referenced plugins must be configured; they need not be in a profile (the producer and the
prefix index learn from every decision through their hooks). `prefixScorerRef` (llm-d:
`prefixMatchInfoProducerName`) defaults to the one prefix scorer configured, so llm-d's own
optimized-baseline config (with its `approx-prefix-cache-producer`) loads unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, Sequence

import pydantic

from ..endpoint import Endpoint
from ..errors import ConfigError
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult, Scorer
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams
from .prefix_cache_scorer import LookupStats, uncached_tokens

#: requests remembered while in flight (the oldest are forgotten past this)
MAX_TRACKED = 65_536


class InFlightTokens:
    """Tokens per endpoint, each request's count kept until it is released."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._by_endpoint: dict[str, int] = {}
        self._requests: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def get(self, endpoint: str) -> int:
        return self._by_endpoint.get(endpoint, 0)

    def add(self, request_id: str, endpoint: str, tokens: int) -> None:
        self.release(request_id)
        self._requests[request_id] = (endpoint, tokens)
        self._by_endpoint[endpoint] = self.get(endpoint) + tokens
        while len(self._requests) > self.max_tracked:
            self.release(next(iter(self._requests)))

    def move(self, request_id: str, endpoint: str) -> None:
        """A fallback endpoint served the request instead: its tokens go there."""
        entry = self._requests.get(request_id)
        if entry is not None and entry[0] != endpoint:
            self.add(request_id, endpoint, entry[1])

    def release(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            endpoint, tokens = entry
            left = self.get(endpoint) - tokens
            if left > 0:
                self._by_endpoint[endpoint] = left
            else:
                self._by_endpoint.pop(endpoint, None)

    def forget_endpoint(self, endpoint: str) -> None:
        self._by_endpoint.pop(endpoint, None)
        for rid in [r for r, (ep, _) in self._requests.items() if ep == endpoint]:
            del self._requests[rid]

    def __len__(self) -> int:
        return len(self._requests)


def _bound(owner: BasePlugin, plugins: dict[str, Any], ref: str, kind: type, what: str) -> Any:
    """The configured plugin named `ref`, which must be a `kind`; a ConfigError otherwise."""
    plugin = plugins.get(ref)
    if not isinstance(plugin, kind):
        wanted = "scorer" if kind is Scorer else getattr(kind, "type_name", kind.__name__)
        raise ConfigError(f"{owner.type_name} {owner.name!r}: {what} {ref!r} names no configured "
                          f"{wanted}")
    return plugin


@register
class InFlightLoadProducer(BasePlugin):
    """Tokens of this gateway's requests in flight, per endpoint (see the module docstring).

    `request` accounting scales the prompt tokens the router already counts per endpoint
    (`Endpoint.in_flight_tokens`, dispatch to finish); `prefill` keeps its own count, released
    at the first token."""

    type_name = "inflight-load-producer"

    class Params(PluginParams):
        accounting: Literal["request", "prefill"] = "request"
        output_ratio: float = pydantic.Field(
            1.5, ge=0.0, description="`request` accounting: output tokens per prompt token")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self.prefill = self.params.accounting == "prefill"
        self.inflight = InFlightTokens()

    def tokens(self, ep: Endpoint) -> int:
        if self.prefill:
            return self.inflight.get(ep.name)
        return round(ep.in_flight_tokens * (1.0 + self.params.output_ratio))

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        if self.prefill:
            target = result.target.name
            self.inflight.add(request.request_id, target, uncached_tokens(ctx, request, target))

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self.inflight.move(request.request_id, endpoint.name)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self.inflight.release(request.request_id)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self.inflight.release(request.request_id)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.inflight.forget_endpoint(endpoint.name)


class _ReadsLoad(BasePlugin):
    """Binds `inFlightLoadProducerName` to the configured producer."""

    load: InFlightLoadProducer

    def bind(self, plugins: dict[str, Any]) -> None:
        self.load = _bound(self, plugins, self.params.in_flight_load_producer_name,
                           InFlightLoadProducer, "inFlightLoadProducerName")


@register
class TokenLoadScorer(_ReadsLoad):
    """Fewest tokens in flight scores highest (llm-d's `token-load-scorer`)."""

    type_name = "token-load-scorer"

    class Params(PluginParams):
        queue_threshold_tokens: int = pydantic.Field(4_194_304, ge=1)
        in_flight_load_producer_name: str = pydantic.Field("inflight-load-producer", min_length=1)

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        cap = float(self.params.queue_threshold_tokens)
        return [1.0 - min(self.load.tokens(ep), cap) / cap for ep in endpoints]


@register
class PrefixCacheAffinityFilter(_ReadsLoad):
    """Keep the endpoints that hold most of the prompt unless they are far busier (llm-d's
    `prefix-cache-affinity-filter`; see the module docstring)."""

    type_name = "prefix-cache-affinity-filter"

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
        self.prefix = _bound(self, plugins, ref, Scorer, "prefixScorerRef")

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
