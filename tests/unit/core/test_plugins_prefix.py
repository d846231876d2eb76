"""prefix-cache-scorer, its block hashes and its index."""

from __future__ import annotations

import random

import pytest

from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.plugins.blockhash import block_hashes
from inferoute.core.plugins.prefix_cache_scorer import PrefixCacheScorer
from inferoute.core.plugins.prefix_match import MATCHED_TOKENS
from inferoute.core.plugins.prefixindex import PrefixIndex
from inferoute.core.scheduling.framework import ProfileResult, SchedulingResult
from inferoute.core.scheduling.registry import create_plugin


def words(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghij ") for _ in range(n_chars))


def scorer(**params) -> PrefixCacheScorer:
    return create_plugin("prefix-cache-scorer", "prefix", params)


def result(*targets) -> SchedulingResult:
    return SchedulingResult("default", {"default": ProfileResult("default", list(targets))})


def route(s, new_ctx, req, eps, target):
    """Score, then record `target` as the choice, as the scheduler would."""
    ctx = new_ctx()
    scores = s.score(ctx, req, eps)
    s.on_scheduled(ctx, req, result(target))
    return scores


# -- block hashes -------------------------------------------------------------------------------
def test_hashes_are_chained_full_blocks_only() -> None:
    text = words(64 * 3 + 10, 1)
    h = block_hashes(text, "m", 64, 256)
    assert len(h) == 3  # the partial trailing block is not hashed
    assert block_hashes(text[:128], "m", 64, 256) == h[:2]  # a prefix has a prefix of hashes
    changed = "X" + text[1:]
    assert all(a != b for a, b in zip(block_hashes(changed, "m", 64, 256), h))  # chain
    assert block_hashes(text, "m", 64, 2) == h[:2]


def test_hashes_depend_on_model_and_block_size() -> None:
    text = words(640, 2)
    base = block_hashes(text, "m", 64, 256)
    assert set(base).isdisjoint(block_hashes(text, "lora-a", 64, 256))
    assert set(base).isdisjoint(block_hashes(text, "m", 128, 256))
    with pytest.raises(ValueError):
        block_hashes(text, "m", 0, 1)


# -- index --------------------------------------------------------------------------------------
def test_index_greedy_longest_prefix_match() -> None:
    idx = PrefixIndex()
    h = list(range(1, 11))
    idx.insert("a", h[:6], capacity=100)
    idx.insert("b", h[:3], capacity=100)
    # another prompt: its first block differs, so (keys being chained) every later key does
    idx.insert("c", [99] + [k + 100 for k in h[1:]], capacity=100)
    assert idx.match(h, ["a", "b", "c", "unknown"]) == [6, 3, 0, 0]
    idx.insert("b", h, capacity=100)
    assert idx.match(h, ["a", "b"]) == [6, 10]
    assert idx.match([], ["a"]) == [0]


def test_index_lru_evicts_tail_blocks_first_and_stays_bounded() -> None:
    idx = PrefixIndex()
    first = list(range(100, 110))
    idx.insert("a", first, capacity=12)
    idx.insert("a", list(range(200, 205)), capacity=12)  # 3 blocks must go
    assert idx.size("a") == 12
    # the oldest prompt lost its last blocks, so its head still matches
    assert idx.match(first, ["a"]) == [7]
    assert len(idx) == 12
    idx.set_capacity("a", 4)
    assert idx.size("a") == 4 and len(idx) == 4


def test_index_shared_blocks_survive_one_owner_leaving() -> None:
    idx = PrefixIndex()
    idx.insert("a", [1, 2, 3], capacity=10)
    idx.insert("b", [1, 2], capacity=10)
    idx.remove_endpoint("a")
    assert idx.match([1, 2, 3], ["a", "b"]) == [0, 2]
    assert len(idx) == 2 and idx.endpoints() == ["b"]
    idx.insert("c", [1], capacity=10)  # reuses the freed slot
    assert idx.match([1, 2], ["b", "c"]) == [2, 1]
    idx.discard("b", [2])
    assert idx.match([1, 2], ["b", "c"]) == [1, 1] and len(idx) == 1


# -- scorer -------------------------------------------------------------------------------------
def test_score_is_matched_over_total_blocks(make_ep, make_req, new_ctx) -> None:
    s = scorer(autoTune=False)
    a, b = make_ep(0), make_ep(1)
    shared = words(64 * 8, 3)
    assert route(s, new_ctx, make_req(shared), [a, b], a) == [0.0, 0.0]
    # same 8 blocks + 8 new ones: a holds half of the prompt
    longer = shared + words(64 * 8, 4)
    assert route(s, new_ctx, make_req(longer), [a, b], b) == [0.5, 0.0]
    assert route(s, new_ctx, make_req(longer), [a, b], b) == [0.5, 1.0]


def test_models_do_not_share_entries(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    a = make_ep(0)
    text = words(640, 5)
    route(s, new_ctx, make_req(text, model="base"), [a], a)
    assert route(s, new_ctx, make_req(text, model="adapter"), [a], a) == [0.0]
    assert route(s, new_ctx, make_req(text, model="base"), [a], a) == [1.0]


def test_short_prompt_scores_zero(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    a = make_ep(0)
    route(s, new_ctx, make_req("short"), [a], a)
    assert route(s, new_ctx, make_req("short"), [a], a) == [0.0]
    assert s.index.size(a.name) == 0


def test_parameters_and_legacy_block_size() -> None:
    assert scorer().block_chars == 64
    assert scorer(blockSizeTokens=32).block_chars == 128
    assert scorer(blockSize=100).block_chars == 100
    assert scorer(blockSize=100, blockSizeTokens=8).block_chars == 32
    s = scorer(maxPrefixBlocksToMatch=4, lruCapacityPerServer=10, autoTune=False)
    assert s.params.max_prefix_blocks_to_match == 4 and s.params.lru_capacity_per_server == 10


def test_max_prefix_blocks_caps_the_lookup(make_ep, make_req, new_ctx) -> None:
    s = scorer(maxPrefixBlocksToMatch=4)
    a = make_ep(0)
    text = words(64 * 10, 6)
    route(s, new_ctx, make_req(text), [a], a)
    assert s.index.size(a.name) == 4
    assert route(s, new_ctx, make_req(text[:64 * 4] + words(64 * 6, 7)), [a], a) == [1.0]


def test_lru_capacity_bounds_each_endpoint(make_ep, make_req, new_ctx) -> None:
    s = scorer(autoTune=False, lruCapacityPerServer=20)
    a = make_ep(0)
    for i in range(10):
        route(s, new_ctx, make_req(words(64 * 8, 100 + i)), [a], a)
    assert s.index.size(a.name) == 20 and len(s.index) == 20


def test_auto_tune_uses_scraped_block_size_and_capacity(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    big = make_ep(0, block_size=32, num_blocks=50)
    tiny_pages = make_ep(1, block_size=1, num_blocks=1600)  # SGLang-style page size 1
    unknown = make_ep(2)
    assert s.layout(big) == (128, 50)
    assert s.layout(tiny_pages) == (64, 100)  # grouped up to 16 tokens, capacity / 16
    assert s.layout(unknown) == (64, 31_250)
    assert scorer(autoTune=False).layout(big) == (64, 31_250)
    assert scorer(maxAutoTunedCapacity=10).layout(big) == (128, 10)

    text = words(128 * 4, 8)  # 4 blocks of 32 tokens, 8 blocks of 16
    for ep in (big, tiny_pages, unknown):
        route(s, new_ctx, make_req(text), [big, tiny_pages, unknown], ep)
    assert (s.index.size(big.name), s.index.size(tiny_pages.name)) == (4, 8)
    # mixed block sizes in one cycle: each endpoint matched with hashes of its own size
    ctx = new_ctx()
    assert s.score(ctx, make_req(text), [big, tiny_pages, unknown]) == [1.0, 1.0, 1.0]
    assert ctx.get(MATCHED_TOKENS) == {big.name: 128, tiny_pages.name: 128,
                                            unknown.name: 128}
    # the scrape shrinks the capacity: the next insert evicts down to it
    big.metrics = EndpointMetrics(block_size=32, num_blocks=2, scraped_at=1.0)
    route(s, new_ctx, make_req(words(128 * 4, 9)), [big], big)
    assert s.index.size(big.name) == 2


def test_fallback_served_moves_the_blocks(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    a, b = make_ep(0), make_ep(1)
    old = words(64 * 4, 10)
    route(s, new_ctx, make_req(old), [a, b], a)
    req = make_req(old + words(64 * 4, 11))
    route(s, new_ctx, req, [a, b], a)  # a is chosen, already holds the first 4 blocks
    s.on_served(req, a, 1.0)  # the first attempt: nothing to correct
    assert s.index.size(a.name) == 8
    s.on_served(req, b, 1.0)  # a failed; b served
    assert s.index.size(a.name) == 4  # a keeps what it had before this request
    assert s.index.size(b.name) == 8
    ctx = new_ctx()
    assert s.score(ctx, req, [a, b]) == [0.5, 1.0]
    s.on_finished(req, b, 2.0, None)
    s.on_served(req, a, 3.0)  # late report after finish: ignored
    assert s.index.size(b.name) == 8 and s.index.size(a.name) == 4


def test_every_profile_target_learns(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    prefill, decode = make_ep(0, role="prefill"), make_ep(1, role="decode")
    req = make_req(words(64 * 3, 12))
    res = SchedulingResult("decode", {"decode": ProfileResult("decode", [decode]),
                                      "prefill": ProfileResult("prefill", [prefill])})
    s.on_scheduled(new_ctx(), req, res)  # no score() ran: hashes computed on demand
    assert s.index.size(prefill.name) == 3 and s.index.size(decode.name) == 3


def test_stats_hit_ratio(make_ep, make_req, new_ctx) -> None:
    s = scorer()
    a = make_ep(0)
    text = words(64 * 4, 13)
    first = make_req(text)
    route(s, new_ctx, first, [a], a)
    second = make_req(text[:128] + words(128, 14))
    route(s, new_ctx, second, [a], a)
    st = s.stats()
    assert (st.lookups, st.blocks_queried, st.blocks_hit) == (2, 8, 2)
    assert st.hit_ratio == 0.25 and st.endpoints == 1 and st.indexed_blocks == 6
    assert first.prefix_cache_hit_ratio == 0.0
    assert second.prefix_cache_hit_ratio == 0.5
