"""`predictive-cost-scorer`'s prefill queue: a fluid drain at the assumed rate, never more than
the uncached prompt tokens still waiting for a first token. An endpoint that prefills faster
than the assumed rate must not look busier than one that just joined: it did, and the new
replica took far more than its share (docs/benchmark.md, the flood under autoscaling)."""

import random

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.predictive_cost_scorer import PredictiveCostScorer
from inferoute.core.request import InferenceRequest, parse_request
from inferoute.core.scheduling.framework import CycleContext

BLOCK_CHARS = 64  # 16 tokens x 4 characters: one KV block of prompt text
RATE = 1_600.0  # assumed prefill tokens/s: 100 blocks a second


def _req(rid: str, blocks: int = 10) -> InferenceRequest:
    text = (rid * (blocks * BLOCK_CHARS))[:blocks * BLOCK_CHARS]
    return parse_request("completions", {"model": "m", "prompt": text, "max_tokens": 16}, {},
                         request_id=rid)


def _ctx(now: float) -> CycleContext:
    return CycleContext(now=now, rng=random.Random(0))


def _scorer() -> tuple[PredictiveCostScorer, list[Endpoint]]:
    s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
        prefill_weight=0.0, queue_weight=1.0, overflow_weight=0.0,
        prefill_tokens_per_second=RATE))
    eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                    metrics=EndpointMetrics(num_blocks=100_000, block_size=16, scraped_at=0.0))
           for i in range(2)]
    return s, eps


def _send(s: PredictiveCostScorer, ep: Endpoint, rid: str, now: float) -> InferenceRequest:
    r = _req(rid)
    s._account(now, r, ep, s._cycle(_ctx(now), r))
    return r


def _queued(s: PredictiveCostScorer, ep: Endpoint, now: float) -> float:
    return s._st(ep.name).queued(now, RATE)


def test_the_queue_drains_at_the_assumed_rate_while_no_first_token_has_come() -> None:
    s, eps = _scorer()
    for i in range(4):
        _send(s, eps[0], f"a{i}", 0.0)
    assert _queued(s, eps[0], 0.0) == pytest.approx(4 * 160)
    assert _queued(s, eps[0], 0.25) == pytest.approx(4 * 160 - 400)
    assert _queued(s, eps[0], 1.0) == 0.0


def test_first_tokens_empty_the_queue_of_an_endpoint_faster_than_assumed() -> None:
    s, eps = _scorer()
    sent = [_send(s, eps[0], f"a{i}", 0.0) for i in range(20)]  # 3,200 tokens: 2 s assumed
    for r in sent[:15]:
        s.on_first_token(r, eps[0], 0.1)
    # the fluid model still owes 3,200 - 160 tokens; only 5 requests (800 tokens) wait
    assert _queued(s, eps[0], 0.1) == pytest.approx(5 * 160)
    for r in sent[15:]:
        s.on_first_token(r, eps[0], 0.2)
    assert _queued(s, eps[0], 0.2) == 0.0
    # a request that ends without a first token (an error, a non-streamed reply) frees it too
    late = _send(s, eps[0], "late", 0.3)
    assert _queued(s, eps[0], 0.3) == pytest.approx(160)
    s.on_finished(late, eps[0], 0.3, None)
    assert _queued(s, eps[0], 0.3) == 0.0
    # a first token after the end, or twice, changes nothing
    s.on_first_token(late, eps[0], 0.4)
    s.on_first_token(sent[0], eps[0], 0.4)
    assert s._st(eps[0].name).pending == 0


def test_a_new_endpoint_does_not_look_cheaper_than_a_served_busy_one() -> None:
    s, eps = _scorer()
    # endpoint 0 served 200 prefills in 1 s (20x the assumed rate); all sent their first token
    for i in range(200):
        r = _send(s, eps[0], f"a{i}", i / 200)
        s.on_first_token(r, eps[0], i / 200 + 0.004)
    s._st(eps[1].name)  # endpoint 1 has just joined: nothing in flight
    c = s.costs(_ctx(1.0), _req("new"), eps)
    # both queues are empty: the costs differ only by the KV demand still decoding on 0
    demand = s._st(eps[0].name).demand
    assert c[0] - c[1] == pytest.approx(demand)
    # the fluid queue alone would still owe 200 x 160 - 1,600 tokens there (1,875 blocks)
    assert _queued(s, eps[0], 1.0) == 0.0


def test_queued_prefill_growth_weighs_a_miss_by_the_requests_waiting_there() -> None:
    costs = {}
    for growth in (0.0, 1.0):
        s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
            prefill_weight=1.0, queue_weight=0.0, overflow_weight=0.0,
            prefill_tokens_per_second=RATE, queued_prefill_growth=growth))
        eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                        metrics=EndpointMetrics(num_blocks=100_000, block_size=16,
                                                scraped_at=0.0)) for i in range(2)]
        for i in range(3):  # three requests wait for their first token at each endpoint
            for ep in eps:
                _send(s, ep, f"{ep.name}-{i}", 0.0)
        late = _send(s, eps[1], "late", 0.0)
        s.on_first_token(late, eps[1], 0.0)  # one of them has its first token: not counted
        assert [s._st(ep.name).prefilling for ep in eps] == [3, 3]
        costs[growth] = s.costs(_ctx(0.0), _req("new"), eps)
    # 10 uncached blocks each, weighed once without growth, 1 + 3 times with it
    assert costs[1.0][0] - costs[0.0][0] == pytest.approx(3 * 10)
    assert costs[1.0][1] - costs[0.0][1] == pytest.approx(3 * 10)


def test_growth_counts_only_the_requests_waiting_past_those_in_prefill() -> None:
    """`queuedPrefillGrowthAfter` n: the first n requests waiting for a first token are those
    a replica prefills even without a backlog; only the ones past them grow a miss's weight,
    so a saturated fleet with a request or two in prefill everywhere weighs misses as at rest."""
    def miss_costs(after: int, waiting: list[int]) -> list[float]:
        s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
            prefill_weight=1.0, queue_weight=0.0, overflow_weight=0.0,
            prefill_tokens_per_second=RATE, queued_prefill_growth=1.0,
            queued_prefill_growth_after=after))
        eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                        metrics=EndpointMetrics(num_blocks=100_000, block_size=16,
                                                scraped_at=0.0)) for i in range(len(waiting))]
        for ep, n in zip(eps, waiting):
            for i in range(n):
                _send(s, ep, f"{ep.name}-{i}", 0.0)
        base = [s._st(ep.name).demand + 10 + 1 for ep in eps]  # demand with the new request
        return [c - b for c, b in zip(s.costs(_ctx(0.0), _req("new"), eps), base)]

    # 10 uncached blocks: x (1 + waiting) without the allowance, x (1 + waiting past 2) with it
    assert miss_costs(0, [1, 2, 5]) == pytest.approx([20, 30, 60])
    assert miss_costs(2, [1, 2, 5]) == pytest.approx([10, 10, 40])


def test_the_queue_is_at_least_what_a_long_prefill_still_owes() -> None:
    """`prefillAttentionTokens`: a long prompt's prefill outlasts the fluid queue (its tokens
    deep in the context cost more), so the queue is at least what the longest one waiting for
    its first token still owes, each token at position x counted (P + x) / (P + context)."""
    def queue_seen(attention: int, blocks: int, now: float) -> float:
        s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
            prefill_weight=0.0, queue_weight=1.0, overflow_weight=0.0,
            prefill_tokens_per_second=RATE, prefill_attention_tokens=attention,
            prefill_rate_context=160))
        eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                        metrics=EndpointMetrics(num_blocks=100_000, block_size=16,
                                                scraped_at=0.0)) for i in range(2)]
        r = _req("long", blocks)
        s._account(0.0, r, eps[0], s._cycle(_ctx(0.0), r))
        s._st(eps[1].name)
        c = s.costs(_ctx(now), _req("new"), eps)
        return (c[0] - c[1] - s._st(eps[0].name).demand) * 16  # the queue term, in tokens

    # 100 blocks = 1,600 tokens, drained by the fluid queue in 1 s; weighed with P = 1,600 and
    # the rate holding at position 160: (1,600 x 1,600 + 1,600^2 / 2) / 1,760 = 2,181.8 tokens
    weighted = (1_600 * 1_600 + 1_600 ** 2 / 2) / 1_760
    assert queue_seen(0, 100, 0.5) == pytest.approx(800)
    assert queue_seen(1_600, 100, 0.5) == pytest.approx(weighted - 800)
    assert queue_seen(0, 100, 1.2) == pytest.approx(0)
    assert queue_seen(1_600, 100, 1.2) == pytest.approx(weighted - 1_920)
    # a short prompt, whose tokens sit before position 160 on average, owes no more than
    # the fluid queue says: the floor leaves it alone
    assert queue_seen(1_600, 10, 0.05) == pytest.approx(160 - 80)


def test_a_first_token_clears_what_a_long_prefill_owes() -> None:
    s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
        prefill_weight=0.0, queue_weight=1.0, overflow_weight=0.0,
        prefill_tokens_per_second=RATE, prefill_attention_tokens=1_600,
        prefill_rate_context=160))
    eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                    metrics=EndpointMetrics(num_blocks=100_000, block_size=16, scraped_at=0.0))
           for i in range(2)]
    r = _send(s, eps[0], "x", 0.0)
    long = _req("long", 100)
    s._account(0.0, long, eps[0], s._cycle(_ctx(0.0), long))
    assert list(s._st(eps[0].name).owed) == [long.request_id]  # the short one is not kept
    s.on_first_token(long, eps[0], 1.5)
    assert s._st(eps[0].name).owed == {}
    s.on_finished(r, eps[0], 1.6, None)
    s.on_finished(long, eps[0], 2.0, None)
    assert s._st(eps[0].name).owed == {} and s._st(eps[0].name).pending == 0


def test_the_most_owed_is_found_among_many_in_a_bounded_heap() -> None:
    from inferoute.core.plugins.predictive_cost_scorer import _EndpointState

    rng = random.Random(7)
    st = _EndpointState()
    assert st.most_owed() is None
    for i in range(3_000):
        st.owe(f"r{i}", rng.random())
        # stale entries never outnumber the live ones by more than the slack
        assert len(st.owed_heap) <= 2 * len(st.owed) + 65
        if rng.random() < 0.6:  # first tokens come in any order
            st.owed.pop(rng.choice(list(st.owed)), None)
        assert st.most_owed() == max(st.owed.values(), default=None)
    # a request owed again (moved to a fallback) counts at its new key only
    st.owed.clear()
    st.owe("x", 5.0)
    st.owed.pop("x")
    st.owe("x", 1.0)
    assert st.most_owed() == 1.0
