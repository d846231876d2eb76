"""Pickers: turn the weighted scores of a profile into endpoints, best first.

The first endpoint is the target; the rest are fallbacks the proxy retries on when the target
fails before the first byte. Every picker takes `maxNumOfEndpoints` (default 2: the target and
one fallback; 1 disables fallbacks; the reference picker's default is 1 because Envoy does the
retrying there).

- `max-score-picker`: highest total first; ties (equal to 1e-9) broken at random with the
  scheduler's seeded RNG, so a fixed seed gives a fixed order.
- `random-picker`: uniformly random order, scores ignored.
- `weighted-random-picker`: random order weighted by score (A-Res: key = u^(1/score)), so an
  endpoint is first with probability proportional to its score; zero scores come last, and if
  every score is zero the draw is uniform.
- `round-robin-picker`: rotates over the candidates ordered by name, one step per request,
  ignoring scores: the plain Kubernetes Service baseline. Fallbacks are the next in rotation.
"""

from __future__ import annotations

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ScoredEndpoint
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams

TIE_EPSILON = 1e-9


class PickerParams(PluginParams):
    max_num_of_endpoints: int = pydantic.Field(
        2, ge=1, le=64, description="target plus fallbacks returned, best first")


@register
class MaxScorePicker(BasePlugin):
    """Highest score first, random tie-break."""

    type_name = "max-score-picker"
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        k = self.params.max_num_of_endpoints
        n = len(scored)
        if n == 0:
            return []
        if n == 1:
            return [scored[0].endpoint]
        rnd = ctx.rng.random
        # Quantise so float noise in weighted sums does not break ties; the random second key
        # orders equal scores.
        keyed = sorted(((-round(s.score / TIE_EPSILON), rnd(), i) for i, s in enumerate(scored)))
        return [scored[i].endpoint for _, _, i in keyed[:k]]


@register
class RandomPicker(BasePlugin):
    """Uniformly random endpoints, scores ignored."""

    type_name = "random-picker"
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        k = min(self.params.max_num_of_endpoints, len(scored))
        return [s.endpoint for s in ctx.rng.sample(scored, k)]


@register
class WeightedRandomPicker(BasePlugin):
    """Random endpoints, each drawn with probability proportional to its score (A-Res)."""

    type_name = "weighted-random-picker"
    Params = PickerParams

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        rnd = ctx.rng.random
        keyed: list[tuple[int, float, int]] = []
        for i, s in enumerate(scored):
            u = rnd()
            if s.score > 0:
                # u ** (1/w) in (0, 1]; larger keys first. Zero-weight ones sort after.
                keyed.append((0, -(u ** (1.0 / s.score)), i))
            else:
                keyed.append((1, -u, i))
        keyed.sort()
        return [scored[i].endpoint for _, _, i in keyed[: self.params.max_num_of_endpoints]]


@register
class RoundRobinPicker(BasePlugin):
    """Next endpoint in name order for each request; scores ignored."""

    type_name = "round-robin-picker"
    Params = PickerParams

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self._next = 0

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        n = len(scored)
        if n == 0:
            return []
        ordered = sorted((s.endpoint for s in scored), key=lambda ep: ep.name)
        start = self._next % n
        self._next = start + 1
        k = min(self.params.max_num_of_endpoints, n)
        return [ordered[(start + j) % n] for j in range(k)]
