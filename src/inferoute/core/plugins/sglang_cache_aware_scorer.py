"""`sglang-cache-aware-scorer`: the SGLang router's cache-aware policy, as one scorer.

The documented algorithm (SGLang model gateway, `--policy cache_aware`):

1. Load is the router's own count of in-flight requests per worker. The system is *imbalanced*
   when `max - min > balanceAbsThreshold` and `max > balanceRelThreshold * min`; then the request
   goes to the least loaded worker.
2. Otherwise the prompt's characters are matched against an approximate radix tree per worker
   (the prompts the router sent there). If the best match covers more than `cacheThreshold` of the
   prompt, the best-matching worker wins; else the worker with the smallest tree (most spare
   cache) does.
3. The prompt is inserted into the chosen worker's tree. Trees are bounded by `maxTreeChars`
   per worker; past it the least recently used leaves are evicted.

The chosen endpoint scores 1, every other 0 (pair it with `max-score-picker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams
from .radix import RadixTree

__all__ = ["SglangCacheAwareScorer"]


@register
class SglangCacheAwareScorer(BasePlugin):
    """Cache-aware routing with load-balance override, as in SGLang's router."""

    type_name = "sglang-cache-aware-scorer"
    metric_reads = MetricReads()

    class Params(PluginParams):
        cache_threshold: float = pydantic.Field(0.3, ge=0.0, le=1.0)
        balance_abs_threshold: int = pydantic.Field(64, ge=0)
        balance_rel_threshold: float = pydantic.Field(1.5, ge=1.0)
        max_tree_chars: int = pydantic.Field(1 << 24, ge=1024,
                                             description="characters kept per worker tree")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self._trees: dict[str, RadixTree] = {}

    def _tree(self, name: str) -> RadixTree:
        tree = self._trees.get(name)
        if tree is None:
            tree = self._trees[name] = RadixTree(self.params.max_tree_chars)
        return tree

    def choose(self, request: InferenceRequest, endpoints: list[Endpoint]) -> int:
        """Index of the endpoint the policy sends `request` to."""
        loads = [ep.in_flight_requests for ep in endpoints]
        lo, hi = min(loads), max(loads)
        p = self.params
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            return loads.index(lo)
        text = request.prefix_text
        matches = [self._tree(ep.name).match(text) for ep in endpoints]
        best = max(range(len(endpoints)), key=lambda i: (matches[i], -loads[i]))
        if text and matches[best] / len(text) > p.cache_threshold:
            return best
        sizes = [self._tree(ep.name).size for ep in endpoints]
        return min(range(len(endpoints)), key=lambda i: (sizes[i], loads[i]))

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        chosen = self.choose(request, endpoints)
        return [1.0 if i == chosen else 0.0 for i in range(len(endpoints))]

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        if request.prefix_text:
            self._tree(result.target.name).insert(request.prefix_text)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._trees.pop(endpoint.name, None)

    def stats(self) -> dict[str, Any]:
        return {name: tree.size for name, tree in self._trees.items()}
