"""Greedy longest-prefix matching over block-owner bitmasks.

Both prefix indexes (the approximate one fed by routing decisions and the precise one fed by KV
events) keep, per block key, a bitmask of the endpoint slots holding it; matching a prompt
against every candidate at once is then one AND per block, done here.

When every endpoint's blocks form whole prefixes (an endpoint holding block k holds blocks
0..k-1: true of the approximate index, whose LRU always touches a prompt's head after its
tail), the masks only lose bits along a prompt, and `nested_prefix_depths` finds each
candidate's depth by bisection: O(distinct depths x log blocks) lookups, not one per block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable, Container, Iterable, Sequence, overload

__all__ = ["clear_owner", "held_prefix", "LazyKeys", "nested_prefix_depths", "prefix_depths"]


class LazyKeys(Sequence[int]):
    """A prompt's first `len(self)` block keys, made as they are read: `at(i)` is the
    unchecked index the matchers here use (they look for it), `tolist()` makes them all.
    Subclasses keep the length in `_n` and define both."""

    __slots__ = ()

    _n: int
    at: Callable[[int], int]

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return self.tolist()[i]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("block index out of range")
        return self.at(i)

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def tolist(self) -> list[int]:
        raise NotImplementedError


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


def nested_prefix_depths(keys: Sequence[int], mask_of: Callable[[int], int], active: int,
                         by_slot: dict[int, int], result: list[int]) -> list[int]:
    """`prefix_depths` for nested holdings: `mask_of(key)` is the owner bitmask of a block key
    and the masks of `keys` only lose bits from one block to the next. Probes the first block
    (most candidates hold none of a prompt), then, when someone holds it and the last block
    is cheap to key, the last (a candidate that holds a prompt's head often holds all of a
    capped prompt: then two probes settle every depth), then bisects between blocks whose
    masks (restricted to `active`) differ; an interval whose two ends agree holds no
    boundary. Writes each candidate's depth into `result` and returns it."""
    n = len(keys)
    if not n or not active:
        return result
    # lazily computed keys (`blockhash.PromptKeys`) are cheap at multiples of their `strides`
    strides = getattr(keys, "strides", ())
    key_at = getattr(keys, "at", keys.__getitem__)
    first = mask_of(key_at(0)) & active
    _settle(active & ~first, 0, by_slot, result)
    # (lo, hi, mask at lo, mask at hi): block n is held by none
    if first and n > 1 and (not strides or n % strides[-1] == 0):
        last = mask_of(key_at(n - 1)) & first
        _settle(last, n, by_slot, result)
        stack = [(0, n - 1, first, last)]
    else:
        stack = [(0, n, first, 0)]
    while stack:
        lo, hi, m_lo, m_hi = stack.pop()
        if m_lo == m_hi:
            continue
        if hi - lo == 1:
            _settle(m_lo & ~m_hi, hi, by_slot, result)
            continue
        mid = _middle(lo, hi, strides)
        m_mid = (mask_of(key_at(mid)) & m_lo) | m_hi
        stack.append((mid, hi, m_mid, m_hi))
        stack.append((lo, mid, m_lo, m_mid))
    return result


def _settle(dropped: int, depth: int, by_slot: dict[int, int], result: list[int]) -> None:
    """Write `depth` for every candidate whose bit is in `dropped`."""
    while dropped:
        low = dropped & -dropped
        result[by_slot[low.bit_length() - 1]] = depth
        dropped ^= low


def _middle(lo: int, hi: int, strides: Sequence[int]) -> int:
    """A position strictly between `lo` and `hi`: the middle, moved to the nearest cheap one
    (`stride - 1` modulo a stride, the largest stride first) when the interval holds one."""
    mid = (lo + hi) // 2
    for stride in strides:
        if hi - lo > stride:
            cheap = mid - (mid + 1) % stride
            if cheap > lo:
                return cheap
            cheap += stride
            if cheap < hi:
                return cheap
    return mid


def held_prefix(keys: Sequence[int], held: Container[int]) -> int:
    """How many leading `keys` are in `held`, for holdings that form whole prefixes (an
    endpoint's blocks, the blocks of requests in flight): a binary search, on cheap positions
    first (see `nested_prefix_depths`)."""
    lo, hi = 0, len(keys)  # the first lo keys are held; key hi (if any) is not
    strides = getattr(keys, "strides", ())
    key_at = getattr(keys, "at", keys.__getitem__)
    while lo < hi:
        # probe key `mid`: held -> at least mid + 1 held
        mid = _middle(lo - 1, hi, strides)
        if key_at(mid) in held:
            lo = mid + 1
        else:
            hi = mid
    return lo


def clear_owner(owners: dict[int, int], keys: Iterable[int], bit: int) -> None:
    """Clear `bit` from the owner masks of `keys`, dropping masks left empty."""
    clear = ~bit
    for key in keys:
        m = owners[key] & clear
        if m:
            owners[key] = m
        else:
            del owners[key]
