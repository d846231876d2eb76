"""`dynamo-kv-scorer`: NVIDIA Dynamo's KV-router cost, lowest cost wins.

For each worker, Dynamo's router computes

    cost = overlapScoreWeight x potential prefill blocks + potential decode blocks

where potential prefill blocks are the request's blocks not already cached on the worker
(prompt blocks - overlap blocks) and potential decode blocks are the blocks of the requests
active there plus this request's. With temperature 0 (the default) the lowest cost wins.

Here the overlap comes from an approximate index of the blocks the gateway sent to each worker
(hashed in blocks of `blockSizeTokens` x 4 characters, LRU-bounded by the worker's scraped
capacity, `num_blocks` x `block_size` counted in its own blocks, or `lruCapacityPerServer`),
and the active blocks from the gateway's in-flight prompt tokens per worker (Dynamo also
counts generated tokens as they stream; the core only learns of a request's end, so decode
growth is not counted). The score is the min-max inverted cost: the cheapest worker scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, DataKey, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, PromptKeys, request_keys
from .common import BasePlugin, PluginParams, inverted_min_max, kv_capacity_blocks
from .prefixindex import PrefixIndex

__all__ = ["DynamoKvScorer"]


@register
class DynamoKvScorer(BasePlugin):
    """Lowest (overlap weight x uncached prefill blocks + active decode blocks) wins."""

    type_name = "dynamo-kv-scorer"
    metric_reads = MetricReads(static=("cache_config",))

    class Params(PluginParams):
        overlap_score_weight: float = pydantic.Field(1.0, ge=0.0)
        block_size_tokens: int = pydantic.Field(16, ge=1, le=4096)
        max_prefix_blocks: int = pydantic.Field(8192, ge=1)
        lru_capacity_per_server: int = pydantic.Field(31_250, ge=1)

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self.block_chars = self.params.block_size_tokens * CHARS_PER_TOKEN
        self.index = PrefixIndex()
        self._key: DataKey[PromptKeys] = DataKey(f"kvcost:{self.name}", PromptKeys)

    def _hashes(self, ctx: CycleContext, request: InferenceRequest) -> PromptKeys:
        hashes = ctx.get(self._key)
        if hashes is None:
            hashes = ctx.put(self._key, request_keys(request, self.block_chars,
                                                     self.params.max_prefix_blocks))
        return hashes

    def costs(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> list[float]:
        """Dynamo's cost per endpoint, in blocks."""
        hashes = self._hashes(ctx, request)
        bs = self.params.block_size_tokens
        request_blocks = -(-request.prompt_tokens_estimate // bs)
        overlap = self.index.match(hashes, [ep.name for ep in endpoints])
        w = self.params.overlap_score_weight
        out = []
        for ep, o in zip(endpoints, overlap):
            prefill = max(0, request_blocks - o)
            decode = ep.in_flight_tokens / bs + request_blocks
            out.append(w * prefill + decode)
        return out

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        return inverted_min_max(self.costs(ctx, request, endpoints))

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        hashes = self._hashes(ctx, request)
        if hashes:
            ep = result.target
            p = self.params
            cap = kv_capacity_blocks(ep, p.block_size_tokens, p.lru_capacity_per_server)
            self.index.insert(ep.name, hashes.tolist(), cap)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)
