"""`predictive-cost-scorer`'s overflow term: past an endpoint's KV capacity, projected demand
weighs `1 + overflowWeight` per block, so a prompt family leaves an over-committed replica at a
smaller demand gap; below capacity the weight changes nothing."""

import random

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.predictive_cost_scorer import PredictiveCostScorer
from inferoute.core.request import parse_request
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.framework import CycleContext

BLOCK_CHARS = 64  # 16 tokens x 4 characters: one KV block of prompt text


def _req(prompt: str, rid: str, max_tokens: int = 16):
    return parse_request("completions", {"model": "m", "prompt": prompt,
                                         "max_tokens": max_tokens}, {}, request_id=rid)


def _ctx() -> CycleContext:
    return CycleContext(now=0.0, rng=random.Random(0))


def _eps(capacity: int) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i}", port=8000,
                     metrics=EndpointMetrics(num_blocks=capacity, block_size=16, scraped_at=0.0))
            for i in range(2)]


def _scorer(overflow: float) -> PredictiveCostScorer:
    # pressure thresholds at 0: the balance term is all KV demand whatever the load
    params = PredictiveCostScorer.Params(prefill_weight=12.0, queue_weight=0.0,
                                         overflow_weight=overflow, pressure_low=0.0,
                                         pressure_high=0.0)
    return PredictiveCostScorer(params=params)


def _load(s: PredictiveCostScorer, ep: Endpoint, family: str, unrelated: int) -> None:
    """`unrelated` 10-block prompts, then one of `family` (the freshest in the prefix index),
    in flight on `ep`."""
    reqs = [_req(chr(65 + i) * (10 * BLOCK_CHARS), f"u{i}")
            for i in range(unrelated)] + [_req(family, "fam")]
    for r in reqs:
        s._account(0.0, r, ep, s._cycle(_ctx(), r))


def _prefers_family_endpoint(overflow: float, capacity: int, unrelated: int) -> bool:
    s = _scorer(overflow)
    eps = _eps(capacity)
    family = "f" * (10 * BLOCK_CHARS)
    _load(s, eps[0], family, unrelated)
    c = s.costs(_ctx(), _req(family + " next", "new"), eps)
    return c[0] < c[1]


def test_overflow_weight_moves_the_spill_point_only_past_capacity() -> None:
    # 3 unrelated requests of 11 blocks each (10 prompt + 1 output) plus the family's 11:
    # the new request's 12 uncached blocks x 12 outweigh a 44-block demand gap either way
    for w in (1.0, 3.0):
        assert _prefers_family_endpoint(w, capacity=10_000, unrelated=3)
    # far below capacity the weight is irrelevant: sticking wins with 10 unrelated requests
    for w in (0.0, 1.0, 3.0):
        assert _prefers_family_endpoint(w, capacity=10_000, unrelated=10)
    # the same load (123 blocks with the new request) over a capacity of 117: the family's
    # endpoint costs 123 + 12 x 1 + w x 6 against 12 + 12 x 11 = 144 elsewhere, so weight 1
    # still sticks (141) and weight 3 spills (153)
    assert _prefers_family_endpoint(1.0, capacity=117, unrelated=10)
    assert not _prefers_family_endpoint(3.0, capacity=117, unrelated=10)


def test_packaged_inferoute_config_uses_overflow_weight_3() -> None:
    cfg = resolve_config("inferoute")
    spec = next(p for p in cfg.plugins if p.type == "predictive-cost-scorer")
    assert spec.parameters["overflowWeight"] == 3.0


def test_an_engines_larger_blocks_count_in_the_scorers_own() -> None:
    """vLLM's CPU backend reports 40 blocks of 128 tokens: 5,120 tokens, 320 of the scorer's
    16-token blocks, not 40. Counted as 40 (640 tokens, less than one 1,088-token prompt), the
    prefix index never matched a prefix and inferoute routed like round-robin on two real
    replicas (hit rate 40% against llm-d's 69% at 1 request/s)."""
    s = _scorer(3.0)
    ep, other = [Endpoint(host=f"10.0.0.{i}", port=8000,
                          metrics=EndpointMetrics(num_blocks=40, block_size=128, scraped_at=0.0))
                 for i in range(2)]
    assert s._capacity(ep) == 320
    family = "f" * (64 * BLOCK_CHARS)  # a 1,024-token system prompt: 8 engine blocks
    reqs = [_req(family + " q", "fam")] + [_req(chr(65 + i) * (10 * BLOCK_CHARS), f"u{i}")
                                           for i in range(8)]
    for r in reqs:  # served and finished one after another: nothing stays in flight
        s._account(0.0, r, ep, s._cycle(_ctx(), r))
        s.on_finished(r, ep, 0.0, None)
    # 65 + 8 x 10 prompt blocks and their outputs: far past 40 blocks, well within 320
    c = s.costs(_ctx(), _req(family + " next", "new"), [ep, other])
    assert c[0] < c[1]
