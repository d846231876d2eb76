"""KVBlockIndex.match against a block-by-block reference: the bisection over endpoints without
orphans, the walk on through predictions, lazy keys and expiry skipped (not done) by a match
must give what the old greedy walk over an eagerly expired index gave, through random events
that remove blocks in the middle of prefixes, evict at the capacity cap, withdraw and cap
predictions."""

from __future__ import annotations

import random

import pytest

from inferoute.core.kvindex import (RUN_BLOCKS, BlockRemovedEvent, BlockStoredEvent, KeyMemo,
                                    KVBlockIndex, TokenKeys, block_keys, chain_root)

BS = 4
ROOT = chain_root(None, BS)


def reference(idx: KVBlockIndex, keys: list[int], names: list[str], now: float,
              speculative: bool) -> list[int]:
    """Leading keys each name holds, one block at a time (a prediction counts while live)."""
    out = []
    for name in names:
        ep = idx._eps.get(name)
        depth = 0
        for key in keys:
            live = speculative and ep is not None and ep.spec.get(key, now) > now
            if not (idx.holds(name, key) or live):
                break
            depth += 1
        out.append(depth)
    return out


def orphans(idx: KVBlockIndex, name: str) -> int:
    blocks = idx._eps[name].blocks
    return sum(1 for _k, _m, parent in blocks.values()
               if parent is not None and parent not in blocks)


def prompts(rng: random.Random) -> list[list[int]]:
    """Prompts that share prefixes of several lengths (a few families)."""
    heads = [[rng.randrange(1000) for _ in range(BS * rng.randint(2, 12))] for _ in range(4)]
    out = []
    for _ in range(24):
        head = rng.choice(heads)
        cut = BS * rng.randint(0, len(head) // BS)
        out.append(head[:cut] + [rng.randrange(1000) for _ in range(BS * rng.randint(1, 8))])
    return out


@pytest.mark.parametrize("seed", range(12))
def test_match_equals_the_greedy_walk_over_an_eagerly_expired_index(seed):
    rng = random.Random(seed)
    idx = KVBlockIndex(capacity=rng.choice([12, 40, 1000]), speculative_ttl=2.0,
                       max_speculative=rng.choice([6, 30, 1000]))
    names = ["a", "b", "c", "d"]
    ps = prompts(rng)
    held: dict[str, list[int]] = {n: [] for n in names}  # engine hashes each stored
    engine_hash = {}  # (name, prefix tuple) -> engine hash: the engine's own, any distinct int
    now = 0.0
    checked = bisected = 0
    for step in range(400):
        now += rng.choice([0.0, 0.1, 0.5, 1.5])
        name = rng.choice(names)
        prompt = rng.choice(ps)
        op = rng.random()
        if op < 0.35:  # the engine stores a prefix of the prompt, from its start
            n = rng.randint(1, len(prompt) // BS)
            hashes = []
            for i in range(n):
                hashes.append(engine_hash.setdefault((name, tuple(prompt[:(i + 1) * BS])),
                                                     len(engine_hash) + 1))
            idx.apply(name, [BlockStoredEvent(tuple(hashes), None, tuple(prompt[:n * BS]), BS)])
            held[name] += hashes
        elif op < 0.55 and held[name]:  # the engine drops blocks, some mid-prefix
            gone = rng.sample(held[name], min(len(held[name]), rng.randint(1, 3)))
            idx.apply(name, [BlockRemovedEvent(tuple(gone))])
        elif op < 0.75:  # a request routed there
            idx.add_speculative(name, block_keys(prompt, BS, ROOT), now)
        elif op < 0.8:  # ... and served elsewhere
            idx.discard_speculative(name, block_keys(prompt, BS, ROOT)[: rng.randint(0, 6)])
        elif op < 0.85:
            idx.expire(now)
        for n in names:
            if n in idx._eps:
                assert idx._eps[n].orphans == orphans(idx, n)
                bisected += not idx._eps[n].orphans
        query = rng.choice(ps)
        cap = rng.choice([None, 3])
        full = block_keys(query, BS, ROOT, cap)
        for speculative in (True, False):
            want = reference(idx, full, names, now, speculative)
            assert idx.match(TokenKeys(query, BS, ROOT, cap), names, now, speculative) == want
            assert idx.match(full, names, now, speculative) == want
            checked += 1
        # a match changes nothing: expiring first gives the same answer
        before = idx.match(full, names, now)
        idx.expire(now)
        assert idx.match(full, names, now) == before
    assert checked == 800 and bisected > 0


def test_token_keys_are_block_keys_made_a_run_at_a_time():
    ids = list(range(1000, 1000 + (2 * RUN_BLOCKS + 5) * BS + 3))
    want = block_keys(ids, BS, ROOT, 2 * RUN_BLOCKS + 2)
    keys = TokenKeys(ids, BS, ROOT, 2 * RUN_BLOCKS + 2)
    assert len(keys) == 2 * RUN_BLOCKS + 2 and keys._keys == []
    assert keys.at(0) == want[0] and len(keys._keys) == 1  # the first block alone
    assert keys[5] == want[5] and len(keys._keys) == RUN_BLOCKS
    assert keys[-1] == want[-1] and len(keys._keys) == len(keys) and keys[2:4] == want[2:4]
    assert keys.tolist() == want == list(keys)
    with pytest.raises(IndexError):
        keys[len(keys)]
    assert len(TokenKeys(ids[:BS - 1], BS, ROOT)) == 0 and TokenKeys([], BS, ROOT).tolist() == []


def test_a_block_removed_mid_prefix_stops_the_match_there():
    idx = KVBlockIndex()
    tokens = list(range(100, 100 + 6 * BS))
    idx.apply("a", [BlockStoredEvent((1, 2, 3, 4, 5, 6), None, tuple(tokens), BS)])
    keys = block_keys(tokens, BS, ROOT)
    assert idx.match(keys, ["a"]) == [6] and idx._eps["a"].orphans == 0
    idx.apply("a", [BlockRemovedEvent((3,))])
    assert idx._eps["a"].orphans == 1  # block 4 is held under a missing parent
    assert idx.match(keys, ["a"]) == [2]
    # the engine stores block 3 again: whole prefixes once more
    idx.apply("a", [BlockStoredEvent((3,), 2, tuple(tokens[2 * BS:3 * BS]), BS)])
    assert idx._eps["a"].orphans == 0 and idx.match(keys, ["a"]) == [6]


def test_the_memo_gives_the_same_keys_and_is_bounded():
    rng = random.Random(3)
    head = [rng.randrange(50_000) for _ in range(3 * RUN_BLOCKS * BS)]
    memo = KeyMemo(size=8)
    for _ in range(20):
        tail = [rng.randrange(50_000) for _ in range(rng.randint(0, 3 * RUN_BLOCKS * BS))]
        prompt = head[: rng.randrange(len(head))] + tail
        assert TokenKeys(prompt, BS, ROOT, None, memo).tolist() == block_keys(prompt, BS, ROOT)
        assert len(memo) <= 8
    # a prompt that opens like an earlier one reuses its runs
    memo = KeyMemo(size=8)
    TokenKeys(head, BS, ROOT, None, memo).tolist()
    assert len(memo) == 4  # three runs and the whole head
    longer = head + [1] * BS
    assert TokenKeys(longer, BS, ROOT, None, memo).tolist() == block_keys(longer, BS, ROOT)
    assert len(memo) == 6  # three runs found, one new (the last block's), a new whole head
    # the same head again: one lookup, its keys shared with the memo, not copied
    again = TokenKeys(list(head), BS, ROOT, None, memo)
    assert again.at(2 * RUN_BLOCKS) == block_keys(head, BS, ROOT)[2 * RUN_BLOCKS]
    first = TokenKeys(head, BS, ROOT, None, memo)
    first.at(len(first) - 1)
    assert again._keys is first._keys and again.tolist() == block_keys(head, BS, ROOT)
    assert len(memo) == 6
