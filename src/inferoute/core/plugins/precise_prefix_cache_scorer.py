"""`precise-prefix-cache-scorer`: prefer endpoints whose engines report holding the prompt's prefix.

Precise prefix-cache routing. The index (`inferoute.core.kvindex.KVBlockIndex`, `self.index`)
learns from the model servers' own KV-cache events, fed by the data layer's ZMQ subscribers (or
the benchmark's simulated engines); keys are chained hashes of token ids, so they do not depend
on the engine's hash seed. The request's token ids (`request.token_ids`, set by the gateway, or
computed here by the tokenizer the data layer attaches with `set_tokenizer`) are hashed the same
way at the endpoint's block size (from its events, else its scraped `cache_config_info`, else
`blockSize`). Score contract as `prefix-cache-scorer`: leading blocks held / the prompt's full
blocks (capped at `maxPrefixBlocksToMatch`); a prompt shorter than one block, or with no token
ids, scores 0 everywhere. Keys are made as far as the match reads them, 32 blocks at a time,
through a memo of recent prompts' runs (`kvindex.TokenKeys`, `KeyMemo`): a prompt that opens
like a recent one costs a hash per run, not per block.

Speculative entries: when a request is routed, its blocks are indexed for the chosen endpoint
for `speculativeTtl` seconds, until the engine's `BlockStored` events confirm them; so a burst
of requests sharing a new prefix does not scatter before the first one's events arrive. When a
fallback served instead (`on_served`), the prediction moves to the endpoint that served. A
decision skips expired predictions; `on_scheduled` (deferred by the gateway) frees them.

Parameters (camelCase in YAML):

- `blockSize` (16): tokens per block for endpoints whose block size is not known yet.
- `maxPrefixBlocksToMatch` (256): blocks of a prompt considered.
- `capacityPerEndpoint` (131,072): engine blocks indexed per endpoint (a safety bound; the
  engines' own evictions arrive as BlockRemoved events).
- `speculative` (true), `speculativeTtl` (2 s; a number of seconds or `500ms`),
  `maxSpeculativePerEndpoint` (65,536).
- `loraIds` ({}): engine LoRA int id -> adapter name, for engines whose events carry only
  `lora_id`; LoRA blocks are otherwise unmatched (base-model blocks always match).

`stats()` reports the same figures as the approximate scorer (lookups, hit ratio).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

import pydantic

from ..endpoint import Endpoint
from ..kvindex import KeyMemo, KVBlockIndex, TokenKeys, chain_root
from ..request import InferenceRequest
from ..scheduling.config import parse_duration
from ..scheduling.framework import CycleContext, DataKey, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams
from .prefix_match import (MATCHED_TOKENS, LookupStats, PrefixCycle, PrefixIndexStats,
                           chosen_targets, cycle_state, matched_tokens)

__all__ = ["MAX_PENDING", "precise_scorers", "PrecisePrefixCacheScorer", "Tokenize"]

#: requests whose prediction may still move after a fallback (bounded)
MAX_PENDING = 4096

Tokenize = Callable[[InferenceRequest], "list[int] | None"]


@register
class PrecisePrefixCacheScorer(BasePlugin, LookupStats):
    """Fraction of the prompt's leading KV blocks the endpoint's engine reports holding."""

    type_name = "precise-prefix-cache-scorer"
    metric_reads = MetricReads(static=("cache_config",))
    produces = (MATCHED_TOKENS,)

    class Params(PluginParams):
        block_size: int = pydantic.Field(16, ge=1, le=4096)
        max_prefix_blocks_to_match: int = pydantic.Field(256, ge=1, le=65536)
        capacity_per_endpoint: int = pydantic.Field(131_072, ge=1, le=10_000_000)
        speculative: bool = True
        speculative_ttl: float = pydantic.Field(2.0, ge=0, le=3600)
        max_speculative_per_endpoint: int = pydantic.Field(65_536, ge=0, le=10_000_000)
        lora_ids: dict[int, str] = pydantic.Field(default_factory=dict)

        @pydantic.field_validator("speculative_ttl", mode="before")
        @classmethod
        def _ttl(cls, v: Any) -> Any:
            return parse_duration(v) if isinstance(v, str) else v

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        p = self.params
        self.index = KVBlockIndex(
            capacity=p.capacity_per_endpoint, speculative_ttl=p.speculative_ttl,
            max_speculative=p.max_speculative_per_endpoint if p.speculative else 0,
            lora_names=p.lora_ids)
        self.tokenizer: Tokenize | None = None
        #: the key runs of recent prompts (prompts that open alike hash their runs once)
        self._memo = KeyMemo()
        self._key: DataKey[PrefixCycle] = DataKey(f"precise:{self.name}", PrefixCycle)
        self._pending: OrderedDict[str, tuple[str, list[int]]] = OrderedDict()
        LookupStats.__init__(self)
        self._untokenized = 0

    def set_tokenizer(self, tokenize: Tokenize | None) -> None:
        """Token ids for requests that arrive without `token_ids` (attached by the data layer)."""
        self.tokenizer = tokenize

    # -- keys --------------------------------------------------------------------------------
    def block_size_of(self, ep: Endpoint) -> int:
        """The endpoint's block size: from its events, its scrape, or the `blockSize` default."""
        return self.block_sizes_of([ep])[0]

    def block_sizes_of(self, endpoints: Sequence[Endpoint]) -> list[int]:
        """`block_size_of` each endpoint, the index read in one pass (a decision asks for
        every candidate)."""
        default = self.params.block_size
        return [bs or ep.metrics.block_size or default
                for bs, ep in zip(self.index.block_sizes([ep.name for ep in endpoints]),
                                  endpoints)]

    def _token_ids(self, request: InferenceRequest) -> list[int] | None:
        if request.token_ids is None and self.tokenizer is not None:
            request.token_ids = self.tokenizer(request)
        return request.token_ids

    def request_keys(self, request: InferenceRequest, block_size: int) -> TokenKeys:
        """The request's block keys at `block_size`, made as far as they are read (none
        without token ids)."""
        ids = self._token_ids(request) or ()
        root = chain_root(request.lora_adapter, block_size)
        return TokenKeys(ids, block_size, root, self.params.max_prefix_blocks_to_match,
                         self._memo)

    def _cycle(self, ctx: CycleContext) -> PrefixCycle:
        return cycle_state(ctx, self._key)

    def _keys(self, state: PrefixCycle, request: InferenceRequest, bs: int) -> TokenKeys:
        keys = state.keys.get(bs)
        if not isinstance(keys, TokenKeys):
            keys = self.request_keys(request, bs)
            state.keys[bs] = keys
        return keys

    # -- scoring -----------------------------------------------------------------------------
    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        state = self._cycle(ctx)
        if self._token_ids(request) is None:
            self._untokenized += 1
            return [0.0] * len(endpoints)
        if not endpoints:
            return []
        names = [ep.name for ep in endpoints]
        sizes = self.block_sizes_of(endpoints)
        tokens = matched_tokens(ctx)
        if sizes.count(sizes[0]) == len(sizes):  # one block size (the usual pool): one match
            bs = sizes[0]
            keys = self._keys(state, request, bs)
            if not keys:
                return [0.0] * len(endpoints)
            found = self.index.match(keys, names, ctx.now, self.params.speculative)
            state.matched.update(zip(names, found))
            tokens.update(zip(names, [m * bs for m in found]))
            total = len(keys)
            return [m / total for m in found]
        groups: dict[int, list[int]] = {}
        for i, bs in enumerate(sizes):
            groups.setdefault(bs, []).append(i)
        scores = [0.0] * len(endpoints)
        for bs, idxs in groups.items():
            keys = self._keys(state, request, bs)
            if not keys:
                continue
            group = [names[i] for i in idxs]
            found = self.index.match(keys, group, ctx.now, self.params.speculative)
            for i, name, m in zip(idxs, group, found):
                scores[i] = m / len(keys)
                state.matched[name] = m
                tokens[name] = m * bs
        return scores

    # -- speculation -------------------------------------------------------------------------
    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        state = self._cycle(ctx)
        primary = result.target
        if self.params.speculative:
            # the decision skipped expired predictions (`match`); free them here, off its path
            self.index.expire(ctx.now)
        for ep in chosen_targets(result):
            keys = self._keys(state, request, self.block_size_of(ep))
            if ep is primary:
                matched = state.matched.get(ep.name)
                if matched is None:
                    matched = self.index.match(keys, [ep.name], ctx.now,
                                               self.params.speculative)[0] if keys else 0
                self.record_lookup(request, matched, len(keys))
            if keys and self.params.speculative:
                every = keys.tolist()
                self.index.add_speculative(ep.name, every, ctx.now)
                if ep is primary:
                    self._pending[request.request_id] = (ep.name, every)
                    self._pending.move_to_end(request.request_id)
                    while len(self._pending) > MAX_PENDING:
                        self._pending.popitem(last=False)

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        rec = self._pending.get(request.request_id)
        if rec is None or rec[0] == endpoint.name:
            return
        self.index.discard_speculative(rec[0], rec[1])
        keys = self.request_keys(request, self.block_size_of(endpoint)).tolist()
        self.index.add_speculative(endpoint.name, keys, now)
        self._pending[request.request_id] = (endpoint.name, keys)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        self._pending.pop(request.request_id, None)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint.name)

    # -- observability -----------------------------------------------------------------------
    @property
    def untokenized(self) -> int:
        """Requests scored without token ids (all zeros): a sign no tokenizer is configured."""
        return self._untokenized

    def stats(self) -> PrefixIndexStats:
        return self.lookup_stats(len(self.index), len(self.index.endpoints()))


def precise_scorers(plugins: Iterable[Any]) -> list[PrecisePrefixCacheScorer]:
    """The precise prefix scorers among a scheduler's plugins (`Scheduler.plugins.values()`)."""
    return [p for p in plugins if isinstance(p, PrecisePrefixCacheScorer)]
