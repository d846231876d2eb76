"""The decision path's prefix work: hashed once per request, matched by bisection.

`PrefixIndex.match` bisects a prompt's blocks (an endpoint's blocks always form whole prefixes);
these tests hold it to the greedy block-by-block walk it replaced, on indexes built by random
inserts with LRU eviction, and check that the prompt is hashed once per block size however many
scorers read it.
"""

from __future__ import annotations

import random
from itertools import repeat

from inferoute.core.blockmatch import prefix_depths
from inferoute.core.plugins import blockhash
from inferoute.core.plugins.blockhash import block_hashes, request_hashes
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


def test_a_request_is_hashed_once_per_block_size(monkeypatch) -> None:
    text = "word " * 2000  # 10,000 characters: 156 blocks of 64
    want_100, want_all = block_hashes(text, "m", 64, 100), block_hashes(text, "m", 64, 1000)
    want_128 = block_hashes(text, "m", 128, 10)
    calls = []
    real = blockhash._extend

    def counting(out, text, model, chars, max_blocks):
        calls.append((len(out), max_blocks))
        return real(out, text, model, chars, max_blocks)

    monkeypatch.setattr(blockhash, "_extend", counting)
    req = InferenceRequest(request_id="r", api="completions", model="m", body={}, headers={},
                           prefix_text=text)
    first = request_hashes(req, 64, 100)
    assert first == want_100
    assert request_hashes(req, 64, 50) == first[:50]
    assert request_hashes(req, 64, 100) is first          # shared, not recomputed
    assert calls == [(0, 100)]
    longer = request_hashes(req, 64, 1000)                # extends the chain from block 100
    assert calls[-1] == (100, 1000)
    assert longer == want_all and len(longer) == 156
    assert request_hashes(req, 128, 10) == want_128


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
