"""Greedy longest-prefix matching over block-owner bitmasks.

Both prefix indexes (the approximate one fed by routing decisions and the precise one fed by KV
events) keep, per block key, a bitmask of the endpoint slots holding it; matching a prompt
against every candidate at once is then one AND per block, done here.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["prefix_depths"]


def prefix_depths(masks: Iterable[int], active: int, by_slot: dict[int, int],
                  result: list[int]) -> list[int]:
    """Greedy longest-prefix match over per-block owner bitmasks.

    `masks` yields, block by block, the bitmask of endpoint slots holding that block; `active`
    has the bits of the candidates; `by_slot` maps a slot to its position in `result`. Writes
    into `result` how many leading blocks each candidate holds, stopping as soon as none is
    left, and returns it.
    """
    depth = 0
    for mask in masks:
        still = mask & active
        if still != active:
            dropped = active & ~still
            while dropped:
                low = dropped & -dropped
                result[by_slot[low.bit_length() - 1]] = depth
                dropped ^= low
            active = still
            if not active:
                return result
        depth += 1
    while active:
        low = active & -active
        result[by_slot[low.bit_length() - 1]] = depth
        active ^= low
    return result
