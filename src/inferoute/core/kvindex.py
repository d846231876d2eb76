"""The precise KV-block index: which endpoints hold which KV blocks, as their engines report.

Sans-I/O: fed with decoded KV events (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`) by
whoever reads them (the ZMQ subscriber in `inferoute.datalayer.kvevents`, or the virtual-time
benchmark through `apply_engine_events`), queried by the `precise-prefix-cache-scorer`.

Keys are ours, not the engine's. A block's key is a chained hash over token ids, computed here
from the events' `token_ids` (`block_keys`): key(i) = xxh3_64(token ids of block i, seed=key(i-1)),
starting from a seed of (block size, LoRA adapter name or "" for the base model; one index serves
one pool, so one base model). The engine's own block hashes depend
on its hash algorithm and `PYTHONHASHSEED`; ours depend only on the tokens, so the gateway can
compute them for an incoming request from its token ids. Each endpoint keeps a map from its
engine hashes to our keys: it resolves `parent_block_hash` (to continue the chain) and
`BlockRemoved` (which names engine hashes only).

Structures (all bounded):

- per endpoint, an LRU of engine hash -> [key, media bitmask, parent engine hash] capped at
  `capacity` blocks (the engine's own evictions arrive as `BlockRemoved`; the cap is a safety
  net when events are lost), a count of entries per key, and a count of held children per
  engine hash, which gives the number of held blocks whose parent is not held ("orphans");
- a global map key -> bitmask of endpoint slots holding it (in any medium), so matching a
  prompt against every candidate costs one dict lookup and one AND per block;
- speculative entries: per endpoint, key -> expiry time (oldest first, at most
  `max_speculative` per endpoint) and a global key -> slot bitmask. The scorer inserts a
  request's blocks for the chosen endpoint at routing time; a `BlockStored` for the same key
  confirms it, otherwise it expires after `speculative_ttl` seconds. `match` is a pure query:
  it skips the entries whose time is up, and `expire` (the scorer's deferred hook) drops them,
  so a decision never pays for an earlier request's expiry.

A request's keys (`TokenKeys`) are made as far as a match reads them: most candidates hold none
of a prompt, so a decision usually hashes a block or two, not the 256 it may match. An event
stores a block only under a held parent, but a `BlockRemoved` (or the capacity cap) may drop a
block in the middle of a held prefix. An endpoint with no orphan holds whole prefixes: along
any prompt its blocks stop at one depth, which `match` finds by bisection (a few lookups, not
one per block); an endpoint with orphans, and the speculative entries (which a withdrawal or
the per-endpoint cap can cut in the middle), are walked block by block.

Media ("GPU", "CPU", ...) are kept per block and reported by `media()`; a block counts as held
when any medium holds it.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import xxhash

from .blockmatch import LazyKeys, nested_prefix_depths, prefix_depths

__all__ = ["KVBlockIndex", "KVIndexStats", "BlockStoredEvent", "BlockRemovedEvent",
           "AllBlocksClearedEvent", "KVEvent", "block_keys", "chain_root", "apply_engine_events",
           "DEFAULT_MEDIUM", "KeyMemo", "RUN_BLOCKS", "TokenKeys"]

DEFAULT_MEDIUM = "GPU"
#: distinct media names tracked as separate bits (more are folded into the last bit)
MAX_MEDIA = 16

_xxh3 = xxhash.xxh3_64_intdigest


# -- events (engine-neutral, decoded) ------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class BlockStoredEvent:
    """Full blocks entered an engine's prefix cache. Engine hashes are ints (bytes are folded
    to ints by the decoder); `token_ids` holds the tokens of all the blocks, in order."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = DEFAULT_MEDIUM
    lora_name: str | None = None


@dataclass(slots=True, frozen=True)
class BlockRemovedEvent:
    block_hashes: tuple[int, ...]
    medium: str | None = DEFAULT_MEDIUM


@dataclass(slots=True, frozen=True)
class AllBlocksClearedEvent:
    pass


KVEvent = BlockStoredEvent | BlockRemovedEvent | AllBlocksClearedEvent


# -- keys ----------------------------------------------------------------------------------------

@lru_cache(maxsize=1024)
def chain_root(lora: str | None, block_size: int) -> int:
    """The seed of the key chain at a block size: of a LoRA adapter's blocks (by adapter name),
    or of the pool's base model (`lora` None); remembered (every decision asks for one)."""
    return xxhash.xxh64_intdigest(f"kv-index:{block_size}\x00{lora or ''}".encode())


def _pack(tokens: Sequence[int]) -> array[int]:
    """The ids as 32-bit words (64-bit when one does not fit): a buffer the hash reads as is.
    `fromlist` converts a list about 1.6x faster than the constructor (which iterates)."""
    try:
        return _words("I", tokens)
    except OverflowError:  # ids past 2**32 (never seen in practice): widen, keep it exact
        return _words("Q", tokens)


def _words(code: str, tokens: Sequence[int]) -> array[int]:
    if type(tokens) is not list:
        return array(code, tokens)
    out = array(code)
    out.fromlist(tokens)
    return out


def _chain(data: bytes | memoryview | array[int], step: int, parent: int) -> list[int]:
    """The chained keys of `data`'s blocks of `step` bytes, from `parent`."""
    view = memoryview(data).cast("B")
    out = [0] * (len(view) // step)
    h = parent
    for i, chunk in enumerate([view[o:o + step] for o in range(0, len(view), step)]):
        h = _xxh3(chunk, h)
        out[i] = h
    return out


def block_keys(token_ids: Sequence[int], block_size: int, parent: int,
               max_blocks: int | None = None) -> list[int]:
    """Keys of the full blocks of `token_ids`, chained from `parent` (a root or a block key)."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    n = len(token_ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n <= 0:
        return []
    data = _pack(token_ids[: n * block_size])
    return _chain(data, data.itemsize * block_size, parent)


#: blocks a `TokenKeys` makes at once, from the start of the prompt (the unit `KeyMemo` keeps)
RUN_BLOCKS = 32


class KeyMemo:
    """A bounded memo of key runs: (parent key, run of `RUN_BLOCKS` blocks) -> their keys, and
    of whole prompt heads (root, every block a `TokenKeys` reads) -> all their keys.

    Keys chain, one hash call per block; a memo hit costs one hash of the whole run (a C call
    over 2 KB at 16-token blocks) instead of 32. Prompts that open alike (a shared system
    prompt, a conversation's history) hit for every run they share, and a prompt whose whole
    head was seen before hits once for all of it. A run is known by a 64-bit XXH3 of its
    packed ids seeded with its parent key, the same kind of hash as the keys, and its size."""

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._runs: OrderedDict[tuple[int, int, int], list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def keys(self, data: memoryview, step: int, parent: int) -> list[int]:
        """`_chain(data, step, parent)` (`data` a byte view), remembered (the list is shared:
        do not change it)."""
        known = (_xxh3(data, parent), len(data), step)
        keys = self.get(known)
        if keys is None:
            keys = _chain(data, step, parent)
            self.put(known, keys)
        return keys

    def get(self, known: tuple[int, int, int]) -> list[int] | None:
        """The keys remembered as `known` ((XXH3 of the bytes seeded with the parent key,
        their size, bytes a block)), or None."""
        keys = self._runs.get(known)
        if keys is not None:
            self._runs.move_to_end(known)
        return keys

    def put(self, known: tuple[int, int, int], keys: list[int]) -> None:
        """Remember `keys` (shared from now on: never change the list) as `known`."""
        runs = self._runs
        runs[known] = keys
        if len(runs) > self.size:
            runs.popitem(last=False)


class TokenKeys(LazyKeys):
    """The first `len(self)` keys of `block_keys(token_ids, block_size, parent, max_blocks)`,
    made only as far as they are read: the first block's alone (a match that stops there, as
    most do, packs 16 ids at 16-token blocks, not 4,096), the first run of `RUN_BLOCKS`, then
    all the others at once, packed by one call. With a `memo`, a head seen before (every id up to `len(self)` blocks) is one
    lookup whose list is shared, not copied; otherwise the runs are looked up one by one.
    `at(i)` is the unchecked index the matchers use; `tolist()` makes them all (the index
    updates need every key)."""

    __slots__ = ("_ids", "_bs", "_root", "_n", "_keys", "_memo")

    def __init__(self, token_ids: Sequence[int], block_size: int, parent: int,
                 max_blocks: int | None = None, memo: KeyMemo | None = None) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        n = len(token_ids) // block_size
        self._n = n if max_blocks is None else max(0, min(n, max_blocks))
        self._ids, self._bs, self._root, self._memo = token_ids, block_size, parent, memo
        self._keys: list[int] = []

    def at(self, i: int) -> int:
        """Key `i` (0 <= i < len(self), not checked)."""
        keys = self._keys
        if i >= len(keys):
            if not keys and i == 0 < self._n - 1:  # the first block alone: most matches
                self._first()                    # stop there (no candidate holds it)
            else:
                if len(keys) == 1:  # that first key alone: made again with its run
                    keys.clear()
                if i < RUN_BLOCKS and not keys:
                    self._make(RUN_BLOCKS)
                elif self._memo is None or not self._whole():
                    self._make(self._n)
            keys = self._keys
        return keys[i]

    def _first(self) -> None:
        """The first block's key alone (its ids packed, one hash)."""
        packed = _pack(self._ids[:self._bs])
        self._keys.append(_xxh3(packed, self._root))

    def _whole(self) -> bool:
        """Take every key from the memo's entry for the whole head, or make them and leave
        one there; False when the ids do not pack in 32 bits (then `_make` does it)."""
        memo, bs, n = self._memo, self._bs, self._n
        assert memo is not None
        try:
            packed = _words("I", self._ids[:n * bs])
        except OverflowError:
            return False
        step = packed.itemsize * bs
        view = memoryview(packed).cast("B")
        known = (_xxh3(view, self._root), len(view), step)
        whole = memo.get(known)
        if whole is not None:
            self._keys = whole  # complete: never changed from here on
            return True
        keys, run = self._keys, step * RUN_BLOCKS
        for at in range(len(keys) * step, len(view), run):
            keys += memo.keys(view[at:at + run], step, keys[-1] if keys else self._root)
        memo.put(known, keys)
        return True

    def _make(self, end: int) -> None:
        """Make the keys up to block `end` (capped at `len(self)`): one pack of their ids
        (most of a decision's cost when it reads a whole prompt), one hash call per run."""
        keys, bs, memo = self._keys, self._bs, self._memo
        have, end = len(keys), min(end, self._n)
        ids = self._ids[have * bs:end * bs]
        try:
            data = _words("I", ids)
        except OverflowError:  # ids past 2**32: each run packed alone, as `_pack` widens it
            runs = [_pack(ids[at:at + RUN_BLOCKS * bs]) for at in range(0, len(ids),
                                                                         RUN_BLOCKS * bs)]
        else:
            runs = [data]
        for packed in runs:
            step = packed.itemsize * bs
            if memo is None:
                keys += _chain(packed, step, keys[-1] if keys else self._root)
                continue
            view, run = memoryview(packed).cast("B"), step * RUN_BLOCKS
            for at in range(0, len(view), run):
                keys += memo.keys(view[at:at + run], step, keys[-1] if keys else self._root)

    def tolist(self) -> list[int]:
        """Every key, first block first."""
        if self._n:
            self.at(self._n - 1)
        return list(self._keys)


# -- index ---------------------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class KVIndexStats:
    endpoints: int
    blocks: int
    speculative: int
    stored_events: int
    removed_events: int
    cleared_events: int
    orphan_blocks: int
    confirmed_speculative: int
    expired_speculative: int


class _Endpoint:
    __slots__ = ("slot", "bit", "blocks", "keys", "children", "orphans", "spec", "block_size")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.bit = 1 << slot
        #: engine hash -> [our key, media bitmask, parent engine hash or None]; LRU order,
        #: oldest first
        self.blocks: OrderedDict[int, list[Any]] = OrderedDict()
        #: our key -> number of engine hashes mapping to it
        self.keys: dict[int, int] = {}
        #: engine hash -> number of held blocks whose parent it is (held or not)
        self.children: dict[int, int] = {}
        #: held blocks whose parent is not held: 0 means the blocks form whole prefixes
        self.orphans = 0
        #: speculative key -> expiry, oldest first
        self.spec: OrderedDict[int, float] = OrderedDict()
        self.block_size: int | None = None


class KVBlockIndex:
    """Block key -> endpoints (and media) holding it, learned from KV events; bounded."""

    def __init__(self, *, capacity: int = 131_072, speculative_ttl: float = 2.0,
                 max_speculative: int = 65_536, lora_names: dict[int, str] | None = None) -> None:
        if capacity < 1 or max_speculative < 0 or speculative_ttl < 0:
            raise ValueError("capacity >= 1, max_speculative >= 0, speculative_ttl >= 0")
        self.capacity = capacity
        self.speculative_ttl = speculative_ttl
        self.max_speculative = max_speculative
        #: engine LoRA int id -> adapter name, for events that carry no lora_name
        self.lora_names: dict[int, str] = dict(lora_names or {})
        self._eps: dict[str, _Endpoint] = {}
        self._free: list[int] = []
        self._owners: dict[int, int] = {}
        self._spec_owners: dict[int, int] = {}
        self._media: dict[str, int] = {}
        self._stored = self._removed = self._cleared = self._orphans = 0
        self._confirmed = self._expired = 0

    # -- endpoints -------------------------------------------------------------------------------
    def _ep(self, name: str) -> _Endpoint:
        ep = self._eps.get(name)
        if ep is None:
            slot = self._free.pop() if self._free else len(self._eps)
            ep = self._eps[name] = _Endpoint(slot)
        return ep

    def endpoints(self) -> list[str]:
        return list(self._eps)

    def block_size(self, name: str) -> int | None:
        """The block size `name`'s events reported (None before its first BlockStored)."""
        ep = self._eps.get(name)
        return None if ep is None else ep.block_size

    def block_sizes(self, names: Sequence[str]) -> list[int | None]:
        """`block_size` of each name, in one pass (a decision asks for every candidate)."""
        get = self._eps.get
        return [None if ep is None else ep.block_size for ep in map(get, names)]

    def size(self, name: str) -> int:
        """Engine blocks indexed for `name` (each medium-independent block counted once)."""
        ep = self._eps.get(name)
        return 0 if ep is None else len(ep.blocks)

    def __len__(self) -> int:
        """Distinct keys held by some endpoint (speculative entries not counted)."""
        return len(self._owners)

    def remove_endpoint(self, name: str) -> None:
        """Forget everything about `name` (it left the pool)."""
        ep = self._eps.pop(name, None)
        if ep is None:
            return
        self._clear_blocks(ep)
        self._clear_spec(ep)
        self._free.append(ep.slot)

    def clear_endpoint(self, name: str) -> None:
        """Forget `name`'s confirmed blocks (AllBlocksCleared, restart, resync); keeps the slot."""
        ep = self._eps.get(name)
        if ep is not None:
            self._clear_blocks(ep)

    def _clear_blocks(self, ep: _Endpoint) -> None:
        owners, clear = self._owners, ~ep.bit
        for key in ep.keys:
            m = owners[key] & clear
            if m:
                owners[key] = m
            else:
                del owners[key]
        ep.blocks.clear()
        ep.keys.clear()
        ep.children.clear()
        ep.orphans = 0

    def _clear_spec(self, ep: _Endpoint) -> None:
        for key in ep.spec:
            self._drop_spec_bit(key, ep.bit)
        ep.spec.clear()

    # -- events ----------------------------------------------------------------------------------
    def apply(self, name: str, events: Iterable[KVEvent]) -> None:
        """Apply one endpoint's events, in order."""
        ep = self._ep(name)
        for ev in events:
            if isinstance(ev, BlockStoredEvent):
                self._stored += 1
                self._store(ep, ev)
            elif isinstance(ev, BlockRemovedEvent):
                self._removed += 1
                self._remove(ep, ev.block_hashes, ev.medium or DEFAULT_MEDIUM)
            elif isinstance(ev, AllBlocksClearedEvent):
                self._cleared += 1
                self._clear_blocks(ep)
            else:
                raise TypeError(f"not a KV event: {ev!r}")

    def _medium_bit(self, medium: str) -> int:
        bit = self._media.get(medium)
        if bit is None:
            if len(self._media) >= MAX_MEDIA:
                return 1 << (MAX_MEDIA - 1)
            bit = self._media[medium] = 1 << len(self._media)
        return bit

    def _root(self, ev: BlockStoredEvent) -> int:
        name = ev.lora_name
        if name is None and ev.lora_id is not None:
            name = self.lora_names.get(ev.lora_id, f"\x00lora-id:{ev.lora_id}")
        return chain_root(name, ev.block_size)

    def _store(self, ep: _Endpoint, ev: BlockStoredEvent) -> None:
        bs = ev.block_size
        n = len(ev.block_hashes)
        if bs < 1 or len(ev.token_ids) < n * bs:
            self._orphans += n
            return
        if ev.parent_block_hash is None:
            parent = self._root(ev)
        else:
            entry = ep.blocks.get(ev.parent_block_hash)
            if entry is None:  # the chain's head was never seen (events lost, late start)
                self._orphans += n
                return
            parent = entry[0]
        ep.block_size = bs
        keys = block_keys(ev.token_ids, bs, parent, n)
        mbit = self._medium_bit(ev.medium or DEFAULT_MEDIUM)
        blocks, counts, owners, bit = ep.blocks, ep.keys, self._owners, ep.bit
        spec, children = ep.spec, ep.children
        prev = ev.parent_block_hash  # held: checked above, or this event's previous block
        for h, key in zip(ev.block_hashes, keys):
            entry = blocks.get(h)
            if entry is not None:
                entry[1] |= mbit
                blocks.move_to_end(h)
                prev = h
                continue
            blocks[h] = [key, mbit, prev]
            if prev is not None:
                children[prev] = children.get(prev, 0) + 1
            ep.orphans -= children.get(h, 0)  # a block back under its held children
            prev = h
            c = counts.get(key, 0)
            counts[key] = c + 1
            if not c:
                owners[key] = owners.get(key, 0) | bit
            if spec.pop(key, None) is not None:
                self._confirmed += 1
                self._drop_spec_bit(key, bit)
        over = len(blocks) - self.capacity
        for _ in range(over):
            h, entry = blocks.popitem(last=False)
            self._drop_entry(ep, h, entry)

    def _remove(self, ep: _Endpoint, hashes: Iterable[int], medium: str) -> None:
        mbit = self._medium_bit(medium)
        blocks = ep.blocks
        for h in hashes:
            entry = blocks.get(h)
            if entry is None:
                continue
            entry[1] &= ~mbit
            if not entry[1]:
                del blocks[h]
                self._drop_entry(ep, h, entry)

    def _drop_entry(self, ep: _Endpoint, h: int, entry: list[Any]) -> None:
        """Account for block `h` (`entry`), just deleted from `ep.blocks`."""
        parent = entry[2]
        if parent is not None:
            c = ep.children[parent] - 1
            if c:
                ep.children[parent] = c
            else:
                del ep.children[parent]
            if parent not in ep.blocks:
                ep.orphans -= 1  # it was one
        ep.orphans += ep.children.get(h, 0)  # its held children are now
        self._drop_key(ep, entry[0])

    def _drop_key(self, ep: _Endpoint, key: int) -> None:
        c = ep.keys[key] - 1
        if c:
            ep.keys[key] = c
            return
        del ep.keys[key]
        m = self._owners[key] & ~ep.bit
        if m:
            self._owners[key] = m
        else:
            del self._owners[key]

    # -- speculation -----------------------------------------------------------------------------
    def add_speculative(self, name: str, keys: Sequence[int], now: float) -> int:
        """Predict that `name` will hold `keys` (a request routed there) until `now + ttl` or a
        confirming BlockStored. Keys it already holds are skipped. Returns entries added."""
        if not self.max_speculative or not self.speculative_ttl or not keys:
            return 0
        ep = self._ep(name)
        self._expire(ep, now)
        spec, held, owners, bit = ep.spec, ep.keys, self._spec_owners, ep.bit
        expiry = now + self.speculative_ttl
        added = 0
        for key in keys:
            if key in held:
                continue
            if key in spec:
                spec.move_to_end(key)
            else:
                owners[key] = owners.get(key, 0) | bit
                added += 1
            spec[key] = expiry
        while len(spec) > self.max_speculative:
            key, _ = spec.popitem(last=False)
            self._drop_spec_bit(key, bit)
        return added

    def discard_speculative(self, name: str, keys: Iterable[int]) -> None:
        """Withdraw predictions for `name` (the request was served elsewhere)."""
        ep = self._eps.get(name)
        if ep is None:
            return
        for key in keys:
            if ep.spec.pop(key, None) is not None:
                self._drop_spec_bit(key, ep.bit)

    def expire(self, now: float) -> None:
        """Drop speculative entries whose time is up (`match` already skips them; this frees
        them, off the decision's path: the scorer calls it from its deferred hook)."""
        for ep in self._eps.values():
            self._expire(ep, now)

    def _expire(self, ep: _Endpoint, now: float) -> None:
        spec = ep.spec
        if not spec or next(iter(spec.values())) > now:  # the usual case: nothing is due
            return
        owners, clear, expired = self._spec_owners, ~ep.bit, 0
        while spec:
            key, t = spec.popitem(last=False)  # oldest first
            if t > now:
                spec[key] = t
                spec.move_to_end(key, last=False)
                break
            expired += 1
            m = owners.get(key, 0) & clear
            if m:
                owners[key] = m
            else:
                owners.pop(key, None)
        self._expired += expired

    def _drop_spec_bit(self, key: int, bit: int) -> None:
        m = self._spec_owners.get(key, 0) & ~bit
        if m:
            self._spec_owners[key] = m
        else:
            self._spec_owners.pop(key, None)

    # -- queries ---------------------------------------------------------------------------------
    def holds(self, name: str, key: int) -> bool:
        ep = self._eps.get(name)
        return ep is not None and key in ep.keys

    def media(self, name: str, key: int) -> list[str]:
        """Media in which `name` holds the block `key` (empty when it does not); a linear scan,
        for debugging and tests."""
        ep = self._eps.get(name)
        if ep is None or key not in ep.keys:
            return []
        mask = 0
        for k, m, _parent in ep.blocks.values():
            if k == key:
                mask |= m
        return [medium for medium, bit in self._media.items() if mask & bit]

    def match(self, keys: Sequence[int], names: Sequence[str], now: float | None = None,
              speculative: bool = True) -> list[int]:
        """For each name, how many leading `keys` it holds (confirmed, or speculative and not
        expired at `now` when `speculative`); changes nothing. Bisects the confirmed blocks of
        endpoints without orphans, then walks on from each depth found (and from 0 for
        endpoints with orphans) while a block is held or predicted. Reads a key through
        `keys.at(i)` when it has one: `TokenKeys` makes them as they are read."""
        eps = self._eps
        whole = partial = due = 0
        by_slot: dict[int, int] = {}
        spec_of: dict[int, dict[int, float]] = {}
        for i, name in enumerate(names):
            ep = eps.get(name)
            if ep is None:
                continue
            by_slot[ep.slot] = i
            if ep.orphans:
                partial |= ep.bit
            else:
                whole |= ep.bit
            spec = ep.spec
            # predictions are kept oldest first: when the oldest is live, all are
            if now is not None and spec and next(iter(spec.values())) <= now:
                due |= ep.bit
                spec_of[ep.bit] = spec
        result = [0] * len(names)
        if not (whole or partial) or not len(keys):
            return result
        get = self._owners.get
        if whole:
            nested_prefix_depths(keys, lambda key: get(key, 0), whole, by_slot, result)
        sget = self._spec_owners.get if speculative and self._spec_owners else None
        if sget is None:
            mask_of: Callable[[int], int] = lambda key: get(key, 0)  # noqa: E731
        elif not due:
            mask_of = lambda key: get(key, 0) | sget(key, 0)  # noqa: E731
        else:
            def mask_of(key: int) -> int:
                held = get(key, 0)
                mask = sget(key, 0) & ~held
                check = mask & due
                while check:  # a prediction of an endpoint with some due: is this one due?
                    low = check & -check
                    check ^= low
                    if spec_of[low].get(key, now) <= now:  # type: ignore[operator]
                        mask ^= low
                return held | mask
        # walk on from each depth found (the bisection's are final without predictions)
        starts: dict[int, int] = {0: partial} if partial else {}
        if sget is not None:
            for slot, i in by_slot.items():
                if whole >> slot & 1:
                    starts[result[i]] = starts.get(result[i], 0) | 1 << slot
        key_at = getattr(keys, "at", keys.__getitem__)
        n = len(keys)
        for start, bits in starts.items():
            if start < n:
                prefix_depths(map(mask_of, map(key_at, range(start, n))), bits, by_slot, result)
                if start:
                    for slot, i in by_slot.items():
                        if bits >> slot & 1:
                            result[i] += start
        return result

    def stats(self) -> KVIndexStats:
        return KVIndexStats(
            endpoints=len(self._eps), blocks=len(self._owners),
            speculative=sum(len(ep.spec) for ep in self._eps.values()),
            stored_events=self._stored, removed_events=self._removed,
            cleared_events=self._cleared, orphan_blocks=self._orphans,
            confirmed_speculative=self._confirmed, expired_speculative=self._expired)


# -- adapters ------------------------------------------------------------------------------------

def from_engine_event(ev: Any) -> KVEvent:
    """A simulator engine event (`inferoute.sim.blocks` dataclasses, or anything with the same
    fields and class names) as an index event."""
    kind = type(ev).__name__
    if kind == "BlockStored":
        return BlockStoredEvent(tuple(ev.block_hashes), ev.parent_block_hash,
                                tuple(ev.token_ids), ev.block_size, ev.lora_id,
                                getattr(ev, "medium", None) or DEFAULT_MEDIUM,
                                getattr(ev, "lora_name", None))
    if kind == "BlockRemoved":
        return BlockRemovedEvent(tuple(ev.block_hashes),
                                 getattr(ev, "medium", None) or DEFAULT_MEDIUM)
    if kind == "AllBlocksCleared":
        return AllBlocksClearedEvent()
    raise TypeError(f"unknown KV event type {kind}")


def apply_engine_events(index: KVBlockIndex, endpoint: str, events: Iterable[Any]) -> None:
    """Feed events drained from a simulator `Engine` (`drain_kv_events()`) into `index` as the
    endpoint `endpoint` (its `ip:port` name); for the virtual-time benchmark."""
    index.apply(endpoint, [e if isinstance(e, (BlockStoredEvent, BlockRemovedEvent,
                                                AllBlocksClearedEvent)) else from_engine_event(e)
                           for e in events])
