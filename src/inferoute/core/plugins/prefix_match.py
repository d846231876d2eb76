"""What the prefix scorers share: the per-cycle scratch, the matched tokens they publish, their
lookup statistics, and the targets whose index learns a decision."""

from __future__ import annotations

from dataclasses import dataclass

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, SchedulingResult

#: ctx.data key under which the scorer publishes {endpoint name: matched prefix tokens}
MATCHED_TOKENS_KEY = "prefix.matched_tokens"


def uncached_tokens(ctx: CycleContext, request: InferenceRequest, endpoint: str) -> int:
    """The prompt tokens `endpoint` would compute: all but those a prefix scorer matched there
    in this cycle (all of them when no prefix scorer ran)."""
    matched = ctx.data.get(MATCHED_TOKENS_KEY, {}).get(endpoint, 0)
    return max(0, request.prompt_tokens_estimate - matched)


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
        request.attributes["prefix_cache_hit_ratio"] = matched / total if total else 0.0

    def lookup_stats(self, indexed_blocks: int, endpoints: int) -> PrefixIndexStats:
        return PrefixIndexStats(lookups=self._lookups, blocks_queried=self._queried,
                                blocks_hit=self._hit, indexed_blocks=indexed_blocks,
                                endpoints=endpoints)


class PrefixCycle:
    """A prefix scorer's scratch for one scheduling cycle: the prompt's block keys by block
    size (computed once for scoring and the index update) and matched blocks by endpoint."""

    __slots__ = ("keys", "matched")

    def __init__(self) -> None:
        self.keys: dict[int, list[int]] = {}
        self.matched: dict[str, int] = {}


def cycle_state(ctx: CycleContext, key: str) -> PrefixCycle:
    """The `PrefixCycle` kept under `key` in this cycle's context (made on first use)."""
    state = ctx.data.get(key)
    if state is None:
        state = ctx.data[key] = PrefixCycle()
    return state
