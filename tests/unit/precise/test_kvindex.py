"""KVBlockIndex: keys recomputed from token ids, parent resolution, removal, media, bounds,
speculative entries, and parity with the simulator's block manager."""

from __future__ import annotations

import random

import pytest

from inferoute.core.kvindex import (AllBlocksClearedEvent, BlockRemovedEvent, BlockStoredEvent,
                                    KVBlockIndex, apply_engine_events, block_keys, chain_root)
from inferoute.sim.blocks import BlockManager, chain_hashes, root_hash

BS = 4


def stored(hashes, parent, tokens, medium="GPU", lora_id=None, lora_name=None):
    return BlockStoredEvent(tuple(hashes), parent, tuple(tokens), BS, lora_id, medium, lora_name)


def keys_of(tokens, lora=None):
    return block_keys(tokens, BS, chain_root(lora, BS))


TOKENS = list(range(100, 116))  # 4 blocks


def test_block_keys_chain_and_partial_block():
    k = keys_of(TOKENS + [1, 2])  # the partial block is ignored
    assert len(k) == 4
    assert k[:2] == keys_of(TOKENS[:8])  # a prefix's keys are a prefix of the keys
    assert keys_of(TOKENS, "lora-a") != k  # LoRA blocks have their own chain
    assert block_keys(TOKENS, BS, chain_root(None, BS), max_blocks=3) == k[:3]
    assert block_keys(TOKENS[:3], BS, chain_root(None, BS)) == []
    big = [2**40] * BS  # ids past 32 bits still hash (exactly)
    assert block_keys(big, BS, 0) != block_keys([0] * BS, BS, 0)


def test_keys_do_not_depend_on_engine_hashes():
    a, b = KVBlockIndex(), KVBlockIndex()
    a.apply("e", [stored([11, 12], None, TOKENS[:8]), stored([13, 14], 12, TOKENS[8:])])
    # a different engine hash seed: different engine hashes, same tokens
    b.apply("e", [stored([91, 92, 93, 94], None, TOKENS)])
    k = keys_of(TOKENS)
    assert a.match(k, ["e"]) == [4]
    assert b.match(k, ["e"]) == [4]


def test_match_greedy_prefix_across_endpoints():
    idx = KVBlockIndex()
    idx.apply("a", [stored([1, 2, 3, 4], None, TOKENS)])
    idx.apply("b", [stored([7, 8], None, TOKENS[:8])])
    k = keys_of(TOKENS)
    assert idx.match(k, ["a", "b", "c"]) == [4, 2, 0]
    other = keys_of([5] * 16)
    assert idx.match(other, ["a", "b"]) == [0, 0]


def test_orphan_blocks_are_skipped_not_guessed():
    idx = KVBlockIndex()
    idx.apply("a", [stored([13, 14], 12, TOKENS[8:])])  # parent 12 never seen
    assert idx.size("a") == 0
    assert idx.stats().orphan_blocks == 2
    # malformed: fewer tokens than blocks x block_size
    idx.apply("a", [stored([1, 2], None, TOKENS[:5])])
    assert idx.size("a") == 0 and idx.stats().orphan_blocks == 4


def test_removed_and_cleared():
    idx = KVBlockIndex()
    idx.apply("a", [stored([1, 2, 3, 4], None, TOKENS)])
    idx.apply("b", [stored([1, 2, 3, 4], None, TOKENS)])
    k = keys_of(TOKENS)
    idx.apply("a", [BlockRemovedEvent((3,), "GPU")])
    assert idx.match(k, ["a", "b"]) == [2, 4]
    idx.apply("a", [BlockRemovedEvent((999,), "GPU")])  # unknown hash: ignored
    idx.apply("b", [AllBlocksClearedEvent()])
    assert idx.match(k, ["a", "b"]) == [2, 0]
    assert len(idx) == 3  # keys 0, 1, 3 still held by a
    idx.remove_endpoint("a")
    assert len(idx) == 0 and idx.endpoints() == ["b"]


def test_media_are_tracked_per_block():
    idx = KVBlockIndex()
    idx.apply("a", [stored([1, 2], None, TOKENS[:8], "GPU"), stored([1, 2], None, TOKENS[:8], "CPU")])
    k = keys_of(TOKENS[:8])
    assert sorted(idx.media("a", k[0])) == ["CPU", "GPU"]
    idx.apply("a", [BlockRemovedEvent((1, 2), "GPU")])  # offloaded: still held on CPU
    assert idx.media("a", k[0]) == ["CPU"] and idx.match(k, ["a"]) == [2]
    idx.apply("a", [BlockRemovedEvent((1, 2), "CPU")])
    assert idx.match(k, ["a"]) == [0] and len(idx) == 0


def test_capacity_bounds_each_endpoint():
    idx = KVBlockIndex(capacity=3)
    idx.apply("a", [stored([1, 2, 3, 4], None, TOKENS)])
    assert idx.size("a") == 3 and len(idx) == 3
    # the oldest (first) entry went: the chain now matches from nothing
    assert idx.match(keys_of(TOKENS), ["a"]) == [0]
    # 1000 random chains never exceed the bound
    rng = random.Random(1)
    for i in range(1000):
        toks = [rng.randrange(50) for _ in range(BS * 2)]
        idx.apply("a", [stored([10_000 + 2 * i, 10_001 + 2 * i], None, toks)])
        assert idx.size("a") <= 3
    assert len(idx) <= 3


def test_lora_blocks_keyed_by_name_or_mapped_id():
    idx = KVBlockIndex(lora_names={7: "sql"})
    idx.apply("a", [stored([1, 2], None, TOKENS[:8], lora_id=7)])
    idx.apply("b", [stored([1, 2], None, TOKENS[:8], lora_id=3, lora_name="sql")])
    idx.apply("c", [stored([1, 2], None, TOKENS[:8], lora_id=3)])  # unknown id: own chain
    assert idx.match(keys_of(TOKENS[:8], "sql"), ["a", "b", "c"]) == [2, 2, 0]
    assert idx.match(keys_of(TOKENS[:8]), ["a", "b", "c"]) == [0, 0, 0]


def test_speculative_ttl_and_confirmation():
    idx = KVBlockIndex(speculative_ttl=2.0)
    k = keys_of(TOKENS)
    assert idx.add_speculative("a", k, now=10.0) == 4
    assert idx.match(k, ["a", "b"], now=11.0) == [4, 0]
    assert idx.match(k, ["a"], now=11.0, speculative=False) == [0]
    # events confirm the first two blocks; the rest expire at 12.0
    idx.apply("a", [stored([1, 2], None, TOKENS[:8])])
    assert idx.stats().confirmed_speculative == 2
    assert idx.match(k, ["a"], now=12.5) == [2]
    # a match skips expired predictions without dropping them; `expire` drops them
    assert idx.stats().speculative == 2
    idx.expire(12.5)
    st = idx.stats()
    assert st.expired_speculative == 2 and st.speculative == 0
    assert idx.match(k, ["a"], now=12.5) == [2]
    # a refresh extends a prediction; discard withdraws it
    idx.add_speculative("b", k, now=20.0)
    idx.add_speculative("b", k, now=21.5)
    assert idx.match(k, ["b"], now=23.0) == [4]
    idx.discard_speculative("b", k)
    assert idx.match(k, ["b"], now=23.0) == [0]


def test_speculative_is_bounded_and_skips_held_blocks():
    idx = KVBlockIndex(max_speculative=3)
    idx.apply("a", [stored([1], None, TOKENS[:4])])
    k = keys_of(TOKENS)
    assert idx.add_speculative("a", k, now=0.0) == 3  # block 0 is already held
    many = keys_of(list(range(400)))
    idx.add_speculative("a", many, now=0.0)
    assert idx.stats().speculative == 3
    assert KVBlockIndex(max_speculative=0).add_speculative("a", k, 0.0) == 0


def test_slots_are_reused_after_removal():
    idx = KVBlockIndex()
    for round_ in range(100):
        name = f"e{round_}"
        idx.apply(name, [stored([1], None, TOKENS[:4])])
        idx.remove_endpoint(name)
    assert idx.endpoints() == [] and len(idx) == 0
    idx.apply("z", [stored([1], None, TOKENS[:4])])
    assert idx.match(keys_of(TOKENS[:4]), ["z"]) == [1]


def test_matches_the_simulator_block_manager():
    """Replay a block manager's events: the index's view equals what the engine caches."""
    rng = random.Random(7)
    bm = BlockManager(40, BS, events=True)
    idx = KVBlockIndex()
    prefixes = [[rng.randrange(1000) for _ in range(BS * 6)] for _ in range(5)]
    live: list[list[int]] = []
    for step in range(300):
        if live and (len(live) > 4 or rng.random() < 0.4):
            bm.release(live.pop(rng.randrange(len(live))))
        else:
            toks = rng.choice(prefixes)[: BS * rng.randint(1, 6)] + [rng.randrange(9)] * BS
            hashes = chain_hashes(toks, BS, root_hash(None))
            hit = bm.lookup(hashes, len(hashes))
            bm.touch(hit)
            new = bm.allocate(len(hashes) - len(hit))
            if new is None:
                bm.release(hit)
                continue
            blocks = hit + new
            start = len(hit)
            bm.cache(new, hashes[start:], hashes[start - 1] if start else None,
                     toks[start * BS:len(hashes) * BS])
            live.append(blocks)
        apply_engine_events(idx, "e", bm.drain_events())
        # every cached engine block is indexed under our key, and nothing else is
        assert idx.size("e") == len(bm.cached)
    for p in prefixes:
        hashes = chain_hashes(p, BS, root_hash(None))
        assert idx.match(keys_of(p), ["e"]) == [len(bm.lookup(hashes, len(hashes)))]


def test_bad_event_type_raises():
    with pytest.raises(TypeError):
        KVBlockIndex().apply("a", [object()])  # type: ignore[list-item]
