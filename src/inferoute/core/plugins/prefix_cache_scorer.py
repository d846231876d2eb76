"""`prefix-cache-scorer`: prefer endpoints that probably hold the prompt's prefix in KV cache.

Approximate (traffic-observed) prefix-cache routing. The prompt (`request.prefix_text`) is cut
into blocks of `blockSizeTokens` x 4 characters and hashed as a chain (see `blockhash`); an
index remembers which blocks were sent to which endpoint (see `prefixindex`). An endpoint's
score is the number of leading blocks it holds divided by the prompt's number of full blocks
(capped at `maxPrefixBlocksToMatch`), so 1.0 means the whole prompt is probably cached there.
Prompts shorter than one block score 0 everywhere.

The index learns from the gateway's own decisions: `on_scheduled` records the prompt's blocks on
the chosen endpoint (the first target of every profile that ran); when the proxy reports that a
fallback served instead (`on_served`), the blocks this request added to the target are moved to
the endpoint that served. `on_endpoint_removed` forgets an endpoint.

Parameters (camelCase in YAML; defaults as in the reference scorer):

- `blockSizeTokens` (16): tokens per hashed block; `blockSize` (legacy) gives it in characters.
- `maxPrefixBlocksToMatch` (256): blocks of a prompt considered (4,096 tokens by default).
- `lruCapacityPerServer` (31,250): blocks remembered per endpoint when its capacity is unknown.
- `autoTune` (true): when an endpoint's scrape carries `cache_config_info` (`block_size`,
  `num_gpu_blocks`), hash its blocks at its real block size and size its LRU by its real number
  of blocks (capped by `maxAutoTunedCapacity`, 131,072). A block size smaller than
  `blockSizeTokens` (e.g. SGLang's page size 1) is grouped up to the next multiple at or above
  `blockSizeTokens`, with the capacity divided accordingly. With mixed block sizes in one pool,
  the prompt is hashed once per distinct size and each endpoint is matched with the hashes of its
  own size; chain seeds differ per size, so sizes never collide in the index.

`stats()` reports lookups and the hit ratio (blocks predicted cached on the chosen endpoint over
blocks looked up) for the gateway's "prefix indexer hit ratio" metric; each scheduled request
also gets `prefix_cache_hit_ratio`. Each cycle it publishes `MATCHED_TOKENS` (the prompt tokens
matched per endpoint) for the plugins that consume it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, DataKey, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .blockhash import CHARS_PER_TOKEN, PromptKeys, request_keys
from .common import BasePlugin, PluginParams
from .prefixindex import PrefixIndex
from .prefix_match import (MATCHED_TOKENS, LookupStats, PrefixCycle, PrefixIndexStats,
                           chosen_targets, cycle_state, matched_tokens)

__all__ = ["MAX_PENDING", "PrefixCacheScorer"]

#: requests whose fallback correction is still possible (bounded)
MAX_PENDING = 4096


@dataclass(slots=True)
class _Pending:
    endpoint: str
    block_chars: int
    added: list[int]


@register
class PrefixCacheScorer(BasePlugin, LookupStats):
    """Fraction of the prompt's leading blocks the endpoint probably holds."""

    type_name = "prefix-cache-scorer"
    #: the cache config sizes the index per endpoint (`autoTune`)
    metric_reads = MetricReads(static=("cache_config",), only_when={"cache_config": "auto_tune"})
    produces = (MATCHED_TOKENS,)

    class Params(PluginParams):
        auto_tune: bool = True
        block_size_tokens: int = pydantic.Field(16, ge=1, le=4096)
        block_size: int | None = pydantic.Field(
            None, ge=1, le=65536, description="legacy: block size in characters")
        max_prefix_blocks_to_match: int = pydantic.Field(256, ge=1, le=65536)
        lru_capacity_per_server: int = pydantic.Field(31_250, ge=1, le=10_000_000)
        max_auto_tuned_capacity: int = pydantic.Field(131_072, ge=1, le=10_000_000)

        @pydantic.model_validator(mode="before")
        @classmethod
        def _legacy_block_size(cls, data: Any) -> Any:
            # blockSize (characters) applies only when blockSizeTokens is not given.
            if isinstance(data, dict) and ("blockSizeTokens" in data
                                           or "block_size_tokens" in data):
                data = {k: v for k, v in data.items() if k not in ("blockSize", "block_size")}
            return data

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        self.block_chars = p.block_size if p.block_size else p.block_size_tokens * CHARS_PER_TOKEN
        self.index = PrefixIndex()
        self._key: DataKey[PrefixCycle] = DataKey(f"prefix:{self.name}", PrefixCycle)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        LookupStats.__init__(self)

    # -- layout ------------------------------------------------------------------------------
    def layout(self, ep: Endpoint) -> tuple[int, int]:
        """(characters per hashed block, LRU capacity in blocks) for this endpoint."""
        p = self.params
        m = ep.metrics
        if not p.auto_tune or not m.block_size:
            return self.block_chars, p.lru_capacity_per_server
        group = -(-p.block_size_tokens // m.block_size) if m.block_size < p.block_size_tokens else 1
        chars = m.block_size * group * CHARS_PER_TOKEN
        if m.num_blocks:
            cap = max(1, min(m.num_blocks // group, p.max_auto_tuned_capacity))
        else:
            cap = p.lru_capacity_per_server
        return chars, cap

    def _cycle(self, ctx: CycleContext) -> PrefixCycle:
        return cycle_state(ctx, self._key)

    def _hashes(self, state: PrefixCycle, request: InferenceRequest,
                block_chars: int) -> PromptKeys:
        hashes = state.keys.get(block_chars)
        if not isinstance(hashes, PromptKeys):
            hashes = state.keys[block_chars] = request_keys(
                request, block_chars, self.params.max_prefix_blocks_to_match)
        return hashes

    # -- scoring -----------------------------------------------------------------------------
    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        state = self._cycle(ctx)
        groups: dict[int, list[int]] = {}
        for i, ep in enumerate(endpoints):
            groups.setdefault(self.layout(ep)[0], []).append(i)
        scores = [0.0] * len(endpoints)
        tokens = matched_tokens(ctx)
        for chars, idxs in groups.items():
            hashes = self._hashes(state, request, chars)
            total = len(hashes)
            if not total:
                continue
            names = [endpoints[i].name for i in idxs]
            tokens_per_block = chars // CHARS_PER_TOKEN
            for i, name, m in zip(idxs, names, self.index.match(hashes, names)):
                scores[i] = m / total
                state.matched[name] = m
                tokens[name] = m * tokens_per_block
        return scores

    # -- learning ----------------------------------------------------------------------------
    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        state = self._cycle(ctx)
        primary = result.target
        for ep in chosen_targets(result):
            chars, cap = self.layout(ep)
            hashes = self._hashes(state, request, chars)
            if ep is primary:
                matched = state.matched.get(ep.name)
                if matched is None:
                    matched = self.index.match(hashes, [ep.name])[0]
                self.record_lookup(request, matched, len(hashes))
            if not hashes:
                continue
            added = self.index.insert(ep.name, hashes.tolist(), cap)
            if ep is primary:
                self._remember(request.request_id, _Pending(ep.name, chars, added))

    def _remember(self, request_id: str, rec: _Pending) -> None:
        self._pending[request_id] = rec
        self._pending.move_to_end(request_id)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._pending.get(request.request_id)
        if rec is None or rec.endpoint == endpoint.name:
            return
        # The target never saw this request: take back what it added there, credit the server.
        self.index.discard(rec.endpoint, rec.added)
        chars, cap = self.layout(endpoint)
        hashes = request_keys(request, chars, self.params.max_prefix_blocks_to_match)
        added = self.index.insert(endpoint.name, hashes.tolist(), cap) if hashes else []
        self._pending[request.request_id] = _Pending(endpoint.name, chars, added)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self._pending.pop(request.request_id, None)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)

    # -- observability -----------------------------------------------------------------------
    def stats(self) -> PrefixIndexStats:
        return self.lookup_stats(len(self.index), len(self.index.endpoints()))
