"""What the prefix scorers share: the per-cycle scratch, the matched tokens they publish, their
lookup statistics, and the targets whose index learns a decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, DataKey, SchedulingResult

__all__ = ["chosen_targets", "cycle_state", "LookupStats", "MATCHED_TOKENS", "matched_tokens",
           "PrefixCycle", "PrefixIndexStats", "uncached_tokens"]

#: {endpoint name: leading prompt tokens a prefix scorer matched there}, this cycle
MATCHED_TOKENS: DataKey[dict[str, int]] = DataKey("prefix-matched-tokens", dict[str, int])


def uncached_tokens(ctx: CycleContext, request: InferenceRequest, endpoint: str) -> int:
    """The prompt tokens `endpoint` would compute: all but those a prefix scorer matched there
    in this cycle (all of them when no prefix scorer ran)."""
    matched = (ctx.get(MATCHED_TOKENS) or {}).get(endpoint, 0)
    return max(0, request.prompt_tokens_estimate - matched)


def matched_tokens(ctx: CycleContext) -> dict[str, int]:
    """This cycle's `MATCHED_TOKENS`, for a prefix scorer to fill in (made on first use)."""
    matched = ctx.get(MATCHED_TOKENS)
    return ctx.put(MATCHED_TOKENS, {}) if matched is None else matched


@dataclass(slots=True, frozen=True)
class PrefixIndexStats:
    lookups: int
    blocks_queried: int
    blocks_hit: int
    indexed_blocks: int
    endpoints: int

    @property
    def hit_ratio(self) -> float:
        return self.blocks_hit / self.blocks_queried if self.blocks_queried else 0.0


def chosen_targets(result: SchedulingResult) -> list[Endpoint]:
    """Each profile's target, the primary's first, without repeats: where a prefix scorer
    records that the request's blocks are about to be cached."""
    out: list[Endpoint] = []
    for name in (result.primary, *result.profiles):
        prof = result.profiles.get(name)
        if prof is not None and prof.targets and prof.targets[0] not in out:
            out.append(prof.targets[0])
    return out


class LookupStats:
    """Counts a prefix scorer's lookups at the primary target, for `stats()` and the metric."""

    def __init__(self) -> None:
        self._lookups = self._queried = self._hit = 0

    def record_lookup(self, request: InferenceRequest, matched: int, total: int) -> None:
        """Count one routed request; also tells the shells its expected hit ratio."""
        self._lookups += 1
        self._queried += total
        self._hit += matched
        request.prefix_cache_hit_ratio = matched / total if total else 0.0

    def lookup_stats(self, indexed_blocks: int, endpoints: int) -> PrefixIndexStats:
        return PrefixIndexStats(lookups=self._lookups, blocks_queried=self._queried,
                                blocks_hit=self._hit, indexed_blocks=indexed_blocks,
                                endpoints=endpoints)


class PrefixCycle:
    """A prefix scorer's scratch for one scheduling cycle: the prompt's block keys by block
    size (computed once for scoring and the index update) and matched blocks by endpoint."""

    __slots__ = ("keys", "matched")

    def __init__(self) -> None:
        self.keys: dict[int, Sequence[int]] = {}
        self.matched: dict[str, int] = {}


def cycle_state(ctx: CycleContext, key: DataKey[PrefixCycle]) -> PrefixCycle:
    """The `PrefixCycle` kept under a scorer's private `key` in this cycle (made on first use)."""
    state = ctx.get(key)
    return ctx.put(key, PrefixCycle()) if state is None else state
