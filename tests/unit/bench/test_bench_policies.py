"""The benchmark policies: sglang cache-aware, dynamo KV cost, inferoute predictive cost."""

import random

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.dynamo_kv_scorer import DynamoKvScorer
from inferoute.core.plugins.predictive_cost_scorer import PredictiveCostScorer
from inferoute.core.plugins.radix import RadixTree
from inferoute.core.plugins.sglang_cache_aware_scorer import SglangCacheAwareScorer
from inferoute.core.request import parse_request
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.framework import CycleContext
from inferoute.core.scheduling.scheduler import Scheduler


def _req(prompt: str, rid: str = "r", max_tokens: int = 32):
    return parse_request("completions", {"model": "m", "prompt": prompt,
                                         "max_tokens": max_tokens}, {}, request_id=rid)


def _eps(n: int) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i}", port=8000,
                     metrics=EndpointMetrics(num_blocks=1000, block_size=16, scraped_at=0.0))
            for i in range(n)]


def _ctx() -> CycleContext:
    return CycleContext(now=0.0, rng=random.Random(0))


def test_radix_tree_match_insert_split_evict() -> None:
    t = RadixTree(max_chars=10_000)
    t.insert("hello world")
    assert t.match("hello world, again") == 11
    assert t.match("help") == 3
    t.insert("help me")
    assert t.match("help me now") == 7 and t.match("hello world") == 11
    assert t.size == len("hello world") + len("p me")
    t.insert("zzz")
    t.evict(target=len("zzz"))
    assert t.size <= 3 and t.match("zzz") == 3 and t.match("hello") == 0


def test_radix_tree_is_bounded() -> None:
    t = RadixTree(max_chars=2000)
    for i in range(100):
        t.insert(f"{i:04d}" + "x" * 96)
    assert t.size <= 2000
    assert t.match("0099" + "x" * 96) == 100  # the most recent survives


def test_sglang_policy_prefers_match_then_smallest_tree_then_balance() -> None:
    s = SglangCacheAwareScorer()
    eps = _eps(3)
    a = "alpha " * 50
    # nothing matches: smallest tree (all empty; least loaded tie -> first)
    first = s.choose(_req(a), eps)
    s._tree(eps[first].name).insert(_req(a).prefix_text)
    assert s.choose(_req(a + "more"), eps) == first
    other = s.choose(_req("beta " * 50), eps)
    assert other != first
    # imbalance: max - min > 64 and max > 1.5 x min -> least loaded wins despite the match
    eps[first].in_flight_requests = 100
    for i, ep in enumerate(eps):
        if i != first:
            ep.in_flight_requests = 10 + i
    assert s.choose(_req(a + "more"), eps) == min(
        (i for i in range(3) if i != first), key=lambda i: eps[i].in_flight_requests)


def test_dynamo_cost_counts_uncached_prefill_and_active_blocks() -> None:
    s = DynamoKvScorer()
    eps = _eps(2)
    prompt = "w" * (64 * 10)  # 10 blocks of 16 tokens
    ctx = _ctx()
    s.index.insert(eps[0].name, s._hashes(ctx, _req(prompt)), 1000)
    costs = s.costs(ctx, _req(prompt), eps)
    # ep0: 0 uncached + 10 new decode blocks; ep1: 10 uncached + 10
    assert costs == [pytest.approx(10.0), pytest.approx(20.0)]
    eps[0].in_flight_tokens = 16 * 15
    assert s.costs(_ctx(), _req(prompt), eps) == [pytest.approx(25.0), pytest.approx(20.0)]


def test_predictive_sticks_to_prefix_until_demand_outweighs_it() -> None:
    s = PredictiveCostScorer()
    eps = _eps(2)
    prompt = "w" * (64 * 40)  # 40 prompt blocks
    ctx = _ctx()
    s._account(0.0, _req(prompt, "a"), eps[0], s._cycle(ctx, _req(prompt, "a")))
    # eps[0] holds the prefix: cheaper despite the demand of request "a"
    c = s.costs(_ctx(), _req(prompt + "tail", "b"), eps)
    assert c[0] < c[1]
    # the same prefix in flight again: its blocks are counted once, it still sticks
    s._account(0.0, _req(prompt, "a2"), eps[0], s._cycle(_ctx(), _req(prompt, "a2")))
    c = s.costs(_ctx(), _req(prompt + "tail", "b2"), eps)
    assert c[0] < c[1]
    # many unrelated in-flight prompts on eps[0]: now the other endpoint is cheaper
    others = [_req(chr(97 + i) * (64 * 40), f"x{i}") for i in range(10)]
    for r in others:
        s._account(0.0, r, eps[0], s._cycle(_ctx(), r))
    c = s.costs(_ctx(), _req(prompt + "tail", "c"), eps)
    assert c[1] < c[0]
    # finishing releases the demand
    for r in others:
        s.on_finished(r, eps[0], 1.0, None)
    c = s.costs(CycleContext(now=100.0, rng=random.Random(0)), _req(prompt + "tail", "d"), eps)
    assert c[0] < c[1]


def test_packaged_policies_build_and_route() -> None:
    for name in ("sglang-cache-aware", "dynamo-kv", "inferoute", "llm-d-optimized"):
        sched = Scheduler(resolve_config(name), seed=0)
        eps = _eps(4)
        first = sched.schedule(_req("q " * 300, "1"), eps, 0.0).target
        again = sched.schedule(_req("q " * 300 + "z", "2"), eps, 0.1).target
        assert again is first, name
