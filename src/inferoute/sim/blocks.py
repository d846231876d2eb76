"""The KV block manager: paged KV memory with prefix caching, as vLLM V1 keeps it.

Blocks are small integers. A block holds `block_size` tokens; once full and computed it can be
*cached* under a chained hash (parent block hash, its token ids, extra keys such as the LoRA), so a
later request with the same prefix reuses it instead of recomputing it. A block's reference count
is the number of running requests that use it. Blocks with no reference sit in the free queue,
least recently freed first: allocation takes the head and, if that block was cached, evicts it
(vLLM's free-block queue). Cached blocks that a new request hits are taken out of the free queue.

The manager records KV events (BlockStored / BlockRemoved / AllBlocksCleared) in a bounded buffer
when asked to, in the order they happen; the engine hands them to whoever publishes them.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import xxhash

__all__ = ["BlockManager", "BlockStored", "BlockRemoved", "AllBlocksCleared", "KVEvent",
           "root_hash", "chain_hashes", "MEDIUM_GPU"]

MEDIUM_GPU = "GPU"
_xxh3 = xxhash.xxh3_64_intdigest


@dataclass(slots=True)
class BlockStored:
    """Full blocks entered the prefix cache; `token_ids` holds all their tokens, in order."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU
    lora_name: str | None = None


@dataclass(slots=True)
class BlockRemoved:
    """Cached blocks were evicted (their memory reused for something else)."""

    block_hashes: list[int]
    medium: str | None = MEDIUM_GPU


@dataclass(slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def root_hash(extra_key: str | None) -> int:
    """The parent hash of a sequence's first block; the extra key (LoRA name) makes it distinct,
    and through the chain every block hash of the sequence."""
    return xxhash.xxh64_intdigest(b"inferoute-sim:" + (extra_key or "").encode())


def chain_hashes(token_ids: Sequence[int], block_size: int, parent: int, start_block: int = 0,
                 end_block: int | None = None) -> list[int]:
    """Hashes of the full blocks start_block..end_block-1 of `token_ids`, chained from `parent`
    (the hash of block start_block-1, or the root hash): H(parent, block token ids)."""
    nfull = len(token_ids) // block_size
    end = nfull if end_block is None else min(end_block, nfull)
    if end <= start_block:
        return []
    lo, hi = start_block * block_size, end * block_size
    data = memoryview(array("I", token_ids[lo:hi]).tobytes())
    step = 4 * block_size
    out = []
    h = parent
    for off in range(0, len(data), step):
        h = _xxh3(data[off:off + step], h)
        out.append(h)
    return out


class BlockManager:
    """A pool of `num_blocks` KV blocks with a prefix cache and LRU eviction of free blocks."""

    def __init__(self, num_blocks: int, block_size: int = 16, *, events: bool = False,
                 max_events: int = 100_000) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}
        # free blocks, eviction order first (OrderedDict: O(1) removal from the middle)
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.events_enabled = events
        self.events: deque[KVEvent] = deque()
        self.max_events = max_events
        self.events_dropped = 0
        self.evictions = 0

    # -- queries ---------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be allocated now (empty or cached-but-unused)."""
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - len(self.free) / self.num_blocks

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Blocks of the longest cached prefix of `hashes` (at most max_blocks); nothing changes."""
        found = list(map(self.cached.get, hashes[:max_blocks]))
        try:
            return found[:found.index(None)]  # type: ignore[return-value]
        except ValueError:
            return found  # type: ignore[return-value]

    def num_unreferenced(self, blocks: Iterable[int]) -> int:
        """How many of `blocks` sit in the free queue (taking them costs free capacity)."""
        return list(map(self.ref.__getitem__, blocks)).count(0)

    # -- changes ---------------------------------------------------------------------------------
    def touch(self, blocks: Iterable[int]) -> None:
        """Take a reference on cache-hit blocks (removing unreferenced ones from the free queue)."""
        ref, free = self.ref, self.free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        """`n` blocks from the head of the free queue (evicting cached ones), or None if short."""
        free = self.free
        if n > len(free):
            return None
        out = []
        ref, hash_of = self.ref, self.hash_of
        for _ in range(n):
            b, _none = free.popitem(last=False)
            h = hash_of[b]
            if h is not None:
                del self.cached[h]
                hash_of[b] = None
                self.evictions += 1
                if self.events_enabled:
                    self._emit(BlockRemoved([h]))
            ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block; unreferenced ones join the free queue's tail, the
        sequence's last block first, so a prefix outlives its tail (vLLM's order)."""
        ref, free = self.ref, self.free
        for b in reversed(blocks):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                free[b] = None

    def cache(self, blocks: Sequence[int], hashes: Sequence[int], parent: int | None,
              token_ids: Sequence[int], lora_id: int | None = None,
              lora_name: str | None = None) -> int:
        """Enter full computed blocks into the prefix cache under their hashes. A hash that is
        already cached (another request computed the same block) leaves that block private.
        `parent` is the hash of the block before blocks[0] (None for a sequence's first block)
        and token_ids the tokens of all `blocks`. Returns how many were entered."""
        cached, hash_of = self.cached, self.hash_of
        stored = 0
        run_start = -1
        for i, (b, h) in enumerate(zip(blocks, hashes)):
            if h in cached or hash_of[b] is not None:
                if run_start >= 0:
                    self._stored(hashes, parent, token_ids, lora_id, lora_name, run_start, i)
                    run_start = -1
                continue
            cached[h] = b
            hash_of[b] = h
            stored += 1
            if run_start < 0:
                run_start = i
        if run_start >= 0:
            self._stored(hashes, parent, token_ids, lora_id, lora_name, run_start,
                         len(blocks))
        return stored

    def reset(self) -> bool:
        """Forget every cached block (only when no request holds a block); True if done."""
        if len(self.free) != self.num_blocks:
            return False
        self.cached.clear()
        self.hash_of = [None] * self.num_blocks
        if self.events_enabled:
            self._emit(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        """The events recorded since the last call, oldest first."""
        out = list(self.events)
        self.events.clear()
        return out

    # -- internals -------------------------------------------------------------------------------
    def _stored(self, hashes: Sequence[int], parent: int | None, token_ids: Sequence[int],
                lora_id: int | None, lora_name: str | None, lo: int, hi: int) -> None:
        if not self.events_enabled:
            return
        bs = self.block_size
        self._emit(BlockStored(list(hashes[lo:hi]), parent if lo == 0 else hashes[lo - 1],
                               list(token_ids[lo * bs:hi * bs]), bs, lora_id,
                               lora_name=lora_name))

    def _emit(self, event: KVEvent) -> None:
        if len(self.events) >= self.max_events:
            self.events.popleft()
            self.events_dropped += 1
        self.events.append(event)
