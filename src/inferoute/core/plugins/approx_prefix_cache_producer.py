"""`approx-prefix-cache-producer`: llm-d's name for the `prefix-cache-scorer` index when
filters read it (`prefix-cache-affinity-filter`), so llm-d's configs load unchanged.

Same parameters as `prefix-cache-scorer`, plus `maxPrefixTokensToMatch`: the cap in tokens
(turned into `maxPrefixBlocksToMatch` at `blockSizeTokens`).
"""

from __future__ import annotations

from typing import Any

import pydantic

from ..scheduling.registry import register
from .prefix_cache_scorer import PrefixCacheScorer

__all__ = ["ApproxPrefixCacheProducer"]


@register
class ApproxPrefixCacheProducer(PrefixCacheScorer):
    """llm-d's name for the same index when filters read it (`prefix-cache-affinity-filter`),
    so llm-d's configs load unchanged; `maxPrefixTokensToMatch` gives the cap in tokens."""

    type_name = "approx-prefix-cache-producer"
    #: the same index as `prefix-cache-scorer`, sized by the cache config the same way
    metric_reads = PrefixCacheScorer.metric_reads

    class Params(PrefixCacheScorer.Params):
        max_prefix_tokens_to_match: int | None = pydantic.Field(None, ge=1, le=1_048_576)

        @pydantic.model_validator(mode="before")
        @classmethod
        def _tokens_to_blocks(cls, data: Any) -> Any:
            if not isinstance(data, dict):
                return data
            tokens = data.get("maxPrefixTokensToMatch", data.get("max_prefix_tokens_to_match"))
            if isinstance(tokens, int) and tokens >= 1:
                size = data.get("blockSizeTokens", data.get("block_size_tokens", 16))
                if isinstance(size, int) and size >= 1:
                    data = {**data, "maxPrefixBlocksToMatch": min(-(-tokens // size), 65_536)}
            return data
