"""The approximate prefix index: which endpoints probably hold which KV blocks.

Two structures kept in step:

- a global map, block hash -> bitmask of endpoint slots holding it, so matching a prompt
  against every candidate at once costs one dict lookup and one AND per block;
- per endpoint, an LRU of its block hashes (an `OrderedDict`, oldest first) bounded by that
  endpoint's capacity in blocks; evicting a block clears the endpoint's bit in the global map.

Endpoints get small integer slots on first use; `remove_endpoint` frees the slot. Every
structure is bounded: the global map holds at most the sum of the endpoints' capacities.

An endpoint's blocks always form whole prefixes (see `insert`), so `match` bisects a prompt's
blocks instead of walking them: its cost grows with the log of the prompt's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

from ..blockmatch import nested_prefix_depths

__all__ = ["PrefixIndex"]


class PrefixIndex:
    """Block-hash index over endpoints, by endpoint name."""

    def __init__(self) -> None:
        self._owners: dict[int, int] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._free: list[int] = []

    # -- endpoints ---------------------------------------------------------------------------
    def _slot(self, name: str) -> int:
        slot = self._slots.get(name)
        if slot is None:
            slot = self._free.pop() if self._free else len(self._slots)
            self._slots[name] = slot
            self._lru[name] = OrderedDict()
        return slot

    def endpoints(self) -> list[str]:
        return list(self._slots)

    def remove_endpoint(self, name: str) -> None:
        """Forget everything about `name`."""
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        clear = ~(1 << slot)
        owners = self._owners
        for h in self._lru.pop(name):
            m = owners[h] & clear
            if m:
                owners[h] = m
            else:
                del owners[h]
        self._capacity.pop(name, None)
        self._free.append(slot)

    # -- sizes -------------------------------------------------------------------------------
    def size(self, name: str) -> int:
        """Blocks held for `name`."""
        lru = self._lru.get(name)
        return len(lru) if lru is not None else 0

    def capacity(self, name: str) -> int | None:
        return self._capacity.get(name)

    def __len__(self) -> int:
        """Distinct block hashes indexed."""
        return len(self._owners)

    # -- queries -----------------------------------------------------------------------------
    def holds(self, name: str, h: int) -> bool:
        lru = self._lru.get(name)
        return lru is not None and h in lru

    def match(self, hashes: Sequence[int], names: Sequence[str]) -> list[int]:
        """For each name, how many leading blocks of `hashes` it holds (greedy longest prefix)."""
        slots = self._slots
        by_slot: dict[int, int] = {}
        active = 0
        for i, name in enumerate(names):
            slot = slots.get(name)
            if slot is not None:
                active |= 1 << slot
                by_slot[slot] = i
        result = [0] * len(names)
        if not active:
            return result
        # every endpoint's blocks form whole prefixes (see `insert`): bisect, don't walk
        owners = self._owners
        return nested_prefix_depths(hashes, lambda h: owners.get(h, 0), active, by_slot,
                                    result)

    # -- updates -----------------------------------------------------------------------------
    def insert(self, name: str, hashes: Sequence[int], capacity: int) -> list[int]:
        """Record that `name` now holds `hashes` (a prompt's blocks, first to last).

        Blocks are touched last-to-first so the prompt's first blocks end up most recent: under
        pressure the LRU drops a prefix's tail before its head, as the model server's block
        manager does, and the surviving blocks still form a matchable prefix.
        Returns the hashes that were new for this endpoint.
        """
        if capacity < 1:
            raise ValueError("capacity must be at least 1 block")
        bit = 1 << self._slot(name)
        lru = self._lru[name]
        owners = self._owners
        touch = lru.move_to_end
        added: list[int] = []
        for h in reversed(hashes):
            if h in lru:
                touch(h)
            else:
                lru[h] = None
                owners[h] = owners.get(h, 0) | bit
                added.append(h)
        self._capacity[name] = capacity
        if len(lru) > capacity:
            self._evict(name, lru, bit, len(lru) - capacity)
        return added

    def set_capacity(self, name: str, capacity: int) -> None:
        """Change `name`'s capacity, evicting its oldest blocks if it shrank."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1 block")
        self._capacity[name] = capacity
        lru = self._lru.get(name)
        if lru is not None and len(lru) > capacity:
            self._evict(name, lru, 1 << self._slots[name], len(lru) - capacity)

    def discard(self, name: str, hashes: Iterable[int]) -> None:
        """Remove these blocks from `name` (e.g. a prediction that turned out wrong)."""
        lru = self._lru.get(name)
        if lru is None:
            return
        clear = ~(1 << self._slots[name])
        owners = self._owners
        for h in hashes:
            if h in lru:
                del lru[h]
                m = owners[h] & clear
                if m:
                    owners[h] = m
                else:
                    del owners[h]

    def _evict(self, name: str, lru: OrderedDict[int, None], bit: int, count: int) -> None:
        owners = self._owners
        clear = ~bit
        pop = lru.popitem
        for _ in range(count):
            h, _ = pop(last=False)
            m = owners[h] & clear
            if m:
                owners[h] = m
            else:
                del owners[h]
