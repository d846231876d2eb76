"""precise-prefix-cache-scorer inside the real Scheduler: scores from events, block sizes,
speculative routing of bursts, fallback correction, tokenizer hook."""

from __future__ import annotations

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.kvindex import BlockStoredEvent
from inferoute.core.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from inferoute.core.plugins.prefix_match import MATCHED_TOKENS
from inferoute.core.request import InferenceRequest
from inferoute.core.scheduling.config import parse_config
from inferoute.core.scheduling.framework import CycleContext
from inferoute.core.scheduling.registry import create_plugin
from inferoute.core.scheduling.scheduler import Scheduler
import random


def req(ids, rid="r", lora=None):
    r = InferenceRequest(request_id=rid, api="completions", model="m", body={}, headers={},
                         prefix_text="", token_ids=list(ids) if ids is not None else None)
    r.lora_adapter = lora
    return r


def eps(n=3, block_size=None):
    return [Endpoint(host="10.0.0.1", port=8000 + i,
                     metrics=EndpointMetrics(block_size=block_size)) for i in range(n)]


def ctx(now=0.0):
    return CycleContext(now=now, rng=random.Random(0))


def store(scorer, name, ids, bs=16, base=1):
    n = len(ids) // bs
    scorer.index.apply(name, [BlockStoredEvent(tuple(range(base, base + n)), None,
                                               tuple(ids[: n * bs]), bs)])


PROMPT = list(range(1000, 1064))  # 4 blocks of 16


def test_scores_are_matched_over_total_blocks():
    s = PrecisePrefixCacheScorer()
    e = eps()
    store(s, e[0].name, PROMPT)
    store(s, e[1].name, PROMPT[:32])
    c = ctx()
    assert list(s.score(c, req(PROMPT + [5, 6]), e)) == [1.0, 0.5, 0.0]
    assert c.get(MATCHED_TOKENS) == {e[0].name: 64, e[1].name: 32, e[2].name: 0}
    # shorter than a block, or no token ids at all: zeros
    assert list(s.score(ctx(), req(PROMPT[:15]), e)) == [0.0, 0.0, 0.0]
    assert list(s.score(ctx(), req(None), e)) == [0.0, 0.0, 0.0]
    assert s.untokenized == 1


def test_block_size_from_events_then_metrics_then_default():
    s = PrecisePrefixCacheScorer()
    e = eps(3)
    e[1].metrics = EndpointMetrics(block_size=32)
    store(s, e[0].name, PROMPT, bs=8)  # events say 8
    store(s, e[1].name, PROMPT, bs=32)
    store(s, e[2].name, PROMPT, bs=16)
    assert [s.block_size_of(x) for x in e] == [8, 32, 16]
    assert list(s.score(ctx(), req(PROMPT), e)) == [1.0, 1.0, 1.0]
    assert s.block_size_of(Endpoint(host="h", port=1)) == 16
    assert s.block_size_of(Endpoint(host="h", port=1,
                                    metrics=EndpointMetrics(block_size=64))) == 64


def test_max_prefix_blocks_caps_the_total():
    s = create_plugin("precise-prefix-cache-scorer", "p", {"maxPrefixBlocksToMatch": 2})
    e = eps(1)
    store(s, e[0].name, PROMPT[:32])
    assert list(s.score(ctx(), req(PROMPT), e)) == [1.0]


def test_lora_requests_use_the_adapter_chain():
    s = PrecisePrefixCacheScorer()
    e = eps(2)
    s.index.apply(e[0].name, [BlockStoredEvent((1, 2, 3, 4), None, tuple(PROMPT), 16, 1, "GPU",
                                               "sql")])
    store(s, e[1].name, PROMPT)
    assert list(s.score(ctx(), req(PROMPT, lora="sql"), e)) == [1.0, 0.0]
    assert list(s.score(ctx(), req(PROMPT), e)) == [0.0, 1.0]


def test_tokenizer_hook_fills_token_ids():
    s = PrecisePrefixCacheScorer()
    e = eps(1)
    store(s, e[0].name, PROMPT)
    s.set_tokenizer(lambda r: PROMPT)
    r = req(None)
    assert list(s.score(ctx(), r, e)) == [1.0]
    assert r.token_ids == PROMPT


def _scheduler(extra=None):
    cfg = parse_config({
        "plugins": [{"type": "precise-prefix-cache-scorer", "parameters": extra or {}},
                    {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "precise-prefix-cache-scorer", "weight": 1},
            {"pluginRef": "max-score-picker"}]}]})
    sched = Scheduler(cfg, seed=1)
    return sched, sched.plugins["precise-prefix-cache-scorer"]


def test_speculation_keeps_a_burst_together_until_ttl():
    sched, s = _scheduler({"speculativeTtl": "2s"})
    e = eps(4)
    first = sched.schedule(req(PROMPT, "r0"), e, now=0.0).target
    assert s.stats().lookups == 1
    # a burst of the same new prefix follows the first request before any event arrives
    for i in range(1, 10):
        r = req(PROMPT, f"r{i}")
        assert sched.schedule(r, e, now=0.1 * i).target is first
        assert r.prefix_cache_hit_ratio == 1.0
    # nothing confirmed it: after the TTL a decision no longer sees the prediction, and its
    # (deferred) hook drops it from the index
    assert list(s.score(ctx(now=10.0), req(PROMPT), e)) == [0.0] * 4
    assert s.index.stats().expired_speculative == 0
    r = req(PROMPT, "r10")
    sched.schedule(r, e, now=10.0)
    assert r.prefix_cache_hit_ratio == 0.0
    assert s.index.stats().expired_speculative == 4


def test_without_speculation_nothing_is_predicted():
    sched, s = _scheduler({"speculative": False})
    e = eps(2)
    sched.schedule(req(PROMPT, "r0"), e, now=0.0)
    assert list(s.score(ctx(0.1), req(PROMPT), e)) == [0.0, 0.0]


def test_fallback_moves_the_prediction():
    sched, s = _scheduler()
    e = eps(2)
    r = req(PROMPT, "r0")
    target = sched.schedule(r, e, now=0.0).target
    other = e[1] if target is e[0] else e[0]
    sched.on_served(r, other, 0.1)
    got = s.score(ctx(0.2), req(PROMPT), e)
    assert got[e.index(other)] == 1.0 and got[e.index(target)] == 0.0
    sched.on_finished(r, other, 0.3, None)


def test_endpoint_removed_is_forgotten():
    sched, s = _scheduler()
    e = eps(2)
    store(s, e[0].name, PROMPT)
    sched.on_endpoint_removed(e[0])
    assert s.index.endpoints() == [] and len(s.index) == 0
