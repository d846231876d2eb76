"""`token-load-scorer` (llm-d): fewest tokens in flight scores highest.

`1 - min(tokens, queueThresholdTokens) / queueThresholdTokens` (4,194,304 by default: 128
requests of 32k tokens), the tokens from the `inflight-load-producer` named by
`inFlightLoadProducerName`.
"""

from __future__ import annotations

from typing import Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import PluginParams
from .inflight_load_producer import ReadsInFlightLoad

__all__ = ["TokenLoadScorer"]


@register
class TokenLoadScorer(ReadsInFlightLoad):
    """Fewest tokens in flight scores highest (llm-d's `token-load-scorer`)."""

    type_name = "token-load-scorer"
    metric_reads = MetricReads()

    class Params(PluginParams):
        queue_threshold_tokens: int = pydantic.Field(4_194_304, ge=1)
        in_flight_load_producer_name: str = pydantic.Field("inflight-load-producer", min_length=1)

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        cap = float(self.params.queue_threshold_tokens)
        return [1.0 - min(self.load.tokens(ep), cap) / cap for ep in endpoints]
