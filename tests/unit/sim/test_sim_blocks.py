"""The KV block manager: allocation, prefix-cache hits, LRU eviction of freed blocks, KV events."""

from inferoute.sim.blocks import (
    AllBlocksCleared,
    BlockManager,
    BlockRemoved,
    BlockStored,
    chain_hashes,
    root_hash,
)


def _toks(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def test_chain_hashes_depend_on_parent_tokens_and_extra_key():
    a = chain_hashes(_toks(1000, 48), 16, root_hash(None))
    b = chain_hashes(_toks(1000, 32) + _toks(5000, 16), 16, root_hash(None))
    lora = chain_hashes(_toks(1000, 48), 16, root_hash("sql-lora"))
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert not set(a) & set(lora)
    # a partial trailing block is not hashed; hashing a range continues the chain
    assert chain_hashes(_toks(1000, 47), 16, root_hash(None)) == a[:2]
    assert chain_hashes(_toks(1000, 48), 16, a[0], 1) == a[1:]


def test_allocate_until_full_then_none():
    m = BlockManager(4, 16)
    got = m.allocate(3)
    assert got == [0, 1, 2] and m.num_free == 1 and m.usage == 0.75
    assert m.allocate(2) is None
    m.release(got)
    assert m.num_free == 4 and m.usage == 0.0


def test_lru_eviction_of_freed_blocks_and_tail_first_order():
    m = BlockManager(6, 4)
    toks_a, toks_b = _toks(1000, 8), _toks(2000, 8)
    ha, hb = chain_hashes(toks_a, 4, 7), chain_hashes(toks_b, 4, 7)
    a, b = m.allocate(2), m.allocate(2)
    m.cache(a, ha, None, toks_a)
    m.cache(b, hb, None, toks_b)
    m.release(a)           # a freed first -> evicted first, its tail block before its head
    m.release(b)
    assert list(m.free) == [4, 5, a[1], a[0], b[1], b[0]]
    assert m.lookup(ha, 2) == a and m.lookup(hb, 2) == b
    m.allocate(3)          # two empty blocks, then a's tail
    assert m.lookup(ha, 2) == [a[0]]
    m.allocate(1)          # a's head
    assert m.lookup(ha, 2) == [] and m.lookup(hb, 2) == b
    assert m.evictions == 2


def test_referenced_blocks_are_never_evicted():
    m = BlockManager(4, 4)
    toks = _toks(1000, 8)
    hs = chain_hashes(toks, 4, 7)
    held = m.allocate(2)
    m.cache(held, hs, None, toks)
    other = m.allocate(2)
    m.release(other)
    assert m.allocate(3) is None           # only the two released blocks are available
    again = m.allocate(2)
    assert sorted(again) == sorted(other)
    assert m.lookup(hs, 2) == held


def test_hit_blocks_leave_the_free_queue_when_touched():
    m = BlockManager(4, 4)
    toks = _toks(1000, 8)
    hs = chain_hashes(toks, 4, 7)
    blocks = m.allocate(2)
    m.cache(blocks, hs, None, toks)
    m.release(blocks)
    hit = m.lookup(hs, 2)
    assert m.num_unreferenced(hit) == 2
    m.touch(hit)
    assert m.num_free == 2 and m.ref[hit[0]] == 1
    m.allocate(2)                          # takes the two empty blocks, evicts nothing
    assert m.lookup(hs, 2) == hit


def test_duplicate_hash_stays_private():
    m = BlockManager(4, 4)
    toks = _toks(1000, 4)
    hs = chain_hashes(toks, 4, 7)
    first, second = m.allocate(1), m.allocate(1)
    assert m.cache(first, hs, None, toks) == 1
    assert m.cache(second, hs, None, toks) == 0
    assert m.hash_of[second[0]] is None and m.lookup(hs, 1) == first


def test_kv_events_stored_removed_cleared_in_order():
    m = BlockManager(2, 4, events=True)
    toks = _toks(1000, 8)
    hs = chain_hashes(toks, 4, 7)
    blocks = m.allocate(2)
    m.cache(blocks[:1], hs[:1], None, toks[:4], lora_id=3)
    m.cache(blocks[1:], hs[1:], hs[0], toks[4:], lora_id=3)
    m.release(blocks)
    m.allocate(1)                          # evicts the tail block (freed first)
    assert m.reset() is False              # a block is in use
    events = m.drain_events()
    assert events == [BlockStored([hs[0]], None, toks[:4], 4, 3),
                      BlockStored([hs[1]], hs[0], toks[4:], 4, 3),
                      BlockRemoved([hs[1]])]
    m.release([1])
    assert m.reset() is True
    assert m.drain_events() == [AllBlocksCleared()] and m.lookup(hs, 2) == []
    assert m.drain_events() == []


def test_event_buffer_is_bounded():
    m = BlockManager(64, 1, events=True, max_events=10)
    toks = _toks(1000, 64)
    hs = chain_hashes(toks, 1, 7)
    blocks = m.allocate(64)
    for i in range(64):
        m.cache(blocks[i:i + 1], hs[i:i + 1], hs[i - 1] if i else None, toks[i:i + 1])
    events = m.drain_events()
    assert len(events) == 10 and m.events_dropped == 54
    assert events[-1].block_hashes == [hs[63]]
