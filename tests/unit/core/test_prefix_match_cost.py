"""The decision path's prefix work: keyed once per request, lazily, matched by bisection.

`PrefixIndex.match` bisects a prompt's blocks (an endpoint's blocks always form whole prefixes);
these tests hold it to the greedy block-by-block walk it replaced, on indexes built by random
inserts with LRU eviction, with keys as lists and as lazy `PromptKeys`; and check that the keys
are computed once per request and block size, and only as far as a lookup needs them.
"""

from __future__ import annotations

import random
from itertools import repeat

from inferoute.core.blockmatch import prefix_depths
from inferoute.core.plugins import blockhash
from inferoute.core.blockmatch import held_prefix
from inferoute.core.plugins.blockhash import CHUNK_BLOCKS, block_hashes, request_keys
from inferoute.core.plugins.prefixindex import PrefixIndex
from inferoute.core.plugins.radix import RadixTree
from inferoute.core.request import InferenceRequest


def _greedy(index: PrefixIndex, hashes: list[int], names: list[str]) -> list[int]:
    slots = {index._slots[n]: i for i, n in enumerate(names) if n in index._slots}
    active = sum(1 << s for s in slots)
    return prefix_depths(map(index._owners.get, hashes, repeat(0)), active, slots,
                         [0] * len(names))


def test_bisected_match_equals_the_greedy_walk_under_eviction() -> None:
    rng = random.Random(7)
    index = PrefixIndex()
    names = [f"ep{i}" for i in range(6)]
    families = [block_hashes(f"family {f} " * 400, "m", 64, 200) for f in range(12)]
    prompts = []
    for _ in range(400):
        fam = rng.choice(families)
        cut = rng.randrange(1, len(fam))
        tail = block_hashes(f"{rng.random()} " * 40, "m", 64, rng.randrange(0, 30))
        prompt = fam[:cut] + tail
        prompts.append(prompt)
        index.insert(rng.choice(names), prompt, capacity=rng.choice((150, 400, 900)))
    for prompt in prompts[-150:] + families:
        subset = rng.sample(names + ["unseen"], rng.randrange(1, 7))
        assert index.match(prompt, subset) == _greedy(index, prompt, subset)
        assert all(held_prefix(prompt, index._lru[n]) == d for n, d in zip(
            subset, index.match(prompt, subset)) if n in index._lru)


def _request(text: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", api="completions", model="m", body={}, headers={},
                            prefix_text=text)


def test_lazy_keys_equal_the_eager_chain_and_are_shared() -> None:
    text = "".join(f"w{i} " for i in range(3000))  # ~16,000 characters: 260 blocks of 64
    eager = block_hashes(text, "m", 64, 10_000)
    assert len(eager) == len(text.encode()) // 64 and len(set(eager)) == len(eager)
    req = _request(text)
    small = request_keys(req, 64, 50)
    assert len(small) == 50 and small.tolist() == eager[:50]
    assert [small[i] for i in (0, 31, 49, -1)] == [eager[i] for i in (0, 31, 49, 49)]
    full = request_keys(req, 64, 10_000)  # grows the same chain
    assert full.tolist() == eager and small.tolist() == eager[:50]
    assert len(req.block_hash_cache) == 1
    # a block's key stands for its whole prefix: it does not depend on how far we key
    assert block_hashes(text, "m", 64, 100) == eager[:100]
    assert block_hashes(text, "other-model", 64, 100)[0] != eager[0]
    assert request_keys(req, 128, 10).tolist() == block_hashes(text, "m", 128, 10)


def test_a_lookup_keys_only_the_chunks_it_lands_in() -> None:
    text = "x" * (64 * CHUNK_BLOCKS * 40)  # 40 chunks
    keys = request_keys(_request(text), 64, 10_000)
    eager = block_hashes(text, "m", 64, 10_000)
    chain = keys._chain
    assert not chain.inner
    index = PrefixIndex()
    index.insert("a", eager[:700], capacity=10_000)
    index.insert("b", eager[:64], capacity=10_000)
    assert index.match(keys, ["a", "b", "c"]) == [700, 64, 0]
    # the first block (c holds none), then bisection on span and chunk keys, then within the
    # chunks where a match ends (700 is block 28 of chunk 21, 64 block 0 of chunk 2), each made
    # only as far as the bisection probes: at most to the chunk's middle for b
    assert set(chain.inner) <= {0, 2, 21}
    assert len(chain.inner[0]) == 1 and len(chain.inner.get(2, ())) <= 16
    assert sum(len(made) for made in chain.inner.values()) <= 1 + 16 + 31
    # chunk ends: in spans 0 (b's match) and 2 (a's) only, each as far as the bisection probed
    assert set(chain.ends) <= {0, 2}
    assert len(chain.ends.get(2, ())) <= 6  # a's match ends in chunk 21, the span's 6th
    assert held_prefix(keys, set(eager[:333])) == 333
    assert held_prefix(eager, set(eager[:333])) == 333


def _eager_keys(text: str, model: str, bc: int, max_blocks: int) -> list[int]:
    """The keys by their definition (blockhash's docstring), every one made up front: a span's
    last block keyed by its span, a chunk's by its chunk, any other by itself, each seeded
    with the key of the block just before what it hashes."""
    from xxhash import xxh3_64_intdigest as h

    data = text[: max_blocks * bc].encode()
    n = min(len(data) // bc, max_blocks)
    seed = blockhash.chain_seed(model, bc)
    span = blockhash.SPAN_BLOCKS * bc
    spans: list[int] = []
    for s in range(n // blockhash.SPAN_BLOCKS):
        spans.append(h(data[s * span:(s + 1) * span], spans[-1] if spans else seed))
    chunk = CHUNK_BLOCKS * bc
    ends: list[int] = []
    for c in range(n // CHUNK_BLOCKS):
        s, k = divmod(c, blockhash.SPAN_CHUNKS)
        ends.append(spans[s] if k == blockhash.SPAN_CHUNKS - 1
                    else h(data[c * chunk:(c + 1) * chunk], ends[-1] if ends else seed))
    out: list[int] = []
    for i in range(n):
        c, j = divmod(i, CHUNK_BLOCKS)
        out.append(ends[c] if j == CHUNK_BLOCKS - 1
                   else h(data[i * bc:(i + 1) * bc], out[-1] if out else seed))
    return out


def test_lazy_keys_read_in_any_order_equal_the_eager_definition() -> None:
    """Keys made as lookups read them (spans, chunks and blocks on demand, an ASCII prompt
    encoded only as far as needed) equal the eager definition, for ASCII and other text,
    whatever the order of the reads and however far the chain was grown before."""
    rng = random.Random(7)
    words = ["w", "block", "é", "漢字", "🙂", "the "]
    for trial in range(40):
        ascii_only = trial % 2 == 0
        pool = words[:2] + words[5:] if ascii_only else words
        n_chars = rng.choice([100, 64 * 300, 64 * blockhash.SPAN_BLOCKS * 2 + 77,
                              rng.randrange(64 * 1200)])
        text = "".join(rng.choice(pool) for _ in range(n_chars // 3 + 1))[:n_chars]
        bc = rng.choice([64, 128])
        cap = rng.choice([10_000, rng.randrange(1, 900)])
        want = _eager_keys(text, "m", bc, cap)
        req = _request(text)
        small = request_keys(req, bc, max(1, cap // 3))
        reads = [rng.randrange(len(small)) for _ in range(5)] if len(small) else []
        assert [small.at(i) for i in reads] == [want[i] for i in reads]
        keys = request_keys(req, bc, cap)  # grows the chain the reads above began
        assert len(keys) == len(want)
        order = list(range(len(keys)))
        rng.shuffle(order)
        for i in order[:50]:
            assert keys.at(i) == want[i]
        assert keys.tolist() == want


def test_a_lookup_no_candidate_holds_encodes_and_hashes_one_chunk() -> None:
    text = "x" * (64 * CHUNK_BLOCKS * 100)  # 100 chunks, 12 spans
    keys = request_keys(_request(text), 64, 10_000)
    index = PrefixIndex()
    index.insert("a", block_hashes("y" * 64 * 10, "m", 64, 10), capacity=100)
    assert index.match(keys, ["a", "b"]) == [0, 0]
    chain = keys._chain
    assert len(chain.data) == 64 * CHUNK_BLOCKS and not chain.spans and not chain.ends
    assert {c: len(made) for c, made in chain.inner.items()} == {0: 1}


def test_radix_match_is_the_longest_common_prefix() -> None:
    rng = random.Random(3)
    tree = RadixTree(max_chars=1 << 20)
    texts = ["".join(rng.choice("ab") for _ in range(rng.randrange(1, 60))) for _ in range(80)]
    for t in texts[:40]:
        tree.insert(t)
    for t in texts:
        best = max(len(_lcp(t, s)) for s in texts[:40])
        assert tree.match(t) == best


def _lcp(a: str, b: str) -> str:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]


def test_common_prefix_by_growing_windows_equals_the_character_walk() -> None:
    from inferoute.core.plugins.radix import _common

    rng = random.Random(11)
    for _ in range(3000):
        edge = "".join(rng.choice("ab") for _ in range(rng.randrange(1, 400)))
        shared = rng.randrange(0, len(edge) + 1)
        other = edge[:shared] + "".join(rng.choice("ab") for _ in range(rng.randrange(0, 400)))
        lead = "x" * rng.randrange(0, 4)
        assert _common(edge, lead + other, len(lead)) == len(_lcp(edge, other))


def test_the_last_block_is_probed_second_and_depths_equal_the_walk() -> None:
    """Candidates holding a capped prompt whole are settled by two probes (its first and last
    block); any nested holdings give the walk's depths, keys as lists or lazy."""
    from inferoute.core.blockmatch import nested_prefix_depths

    rng = random.Random(11)
    for trial in range(300):
        n = rng.choice([1, 2, 31, 32, 64, 257, 512])
        keys = list(range(1000, 1000 + n))
        depth = {slot: rng.choice([0, n, rng.randint(0, n)]) for slot in range(6)}
        masks = {k: sum(1 << s for s, d in depth.items() if d > i)
                 for i, k in enumerate(keys)}
        by_slot = {s: s for s in depth}
        probes: list[int] = []

        def mask_of(key: int) -> int:
            probes.append(key)
            return masks.get(key, 0)

        got = nested_prefix_depths(keys, mask_of, 0b111111, by_slot, [0] * 6)
        want = prefix_depths((masks[k] for k in keys), 0b111111, by_slot, [0] * 6)
        assert got == want == [depth[s] for s in range(6)]
        if set(depth.values()) <= {0, n} and n > 1:
            assert len(probes) <= 2
    # lazy keys: a capped prompt held whole costs its first block and its last chunk's end
    text = "x" * (64 * (CHUNK_BLOCKS * 3 + 5))
    eager = block_hashes(text, "m", 64, 10_000)
    index = PrefixIndex()
    index.insert("a", eager, capacity=10_000)
    assert index.match(request_keys(_request(text), 64, 10_000), ["a"]) == [len(eager)]
    capped = request_keys(_request(text), 64, CHUNK_BLOCKS * 2)
    assert index.match(capped, ["a"]) == [CHUNK_BLOCKS * 2]
    assert {c: len(made) for c, made in capped._chain.inner.items()} == {0: 1}
    assert {s: len(made) for s, made in capped._chain.ends.items()} == {0: 2}
