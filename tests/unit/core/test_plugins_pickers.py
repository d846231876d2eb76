"""Pickers: max-score, random, weighted-random, round-robin."""

from __future__ import annotations

import random
from collections import Counter

from inferoute.core.scheduling.framework import CycleContext, ScoredEndpoint
from inferoute.core.scheduling.registry import create_plugin


def scored(make_ep, *scores):
    return [ScoredEndpoint(make_ep(i), s) for i, s in enumerate(scores)]


def test_max_score_best_first_with_fallbacks(make_ep, make_req, ctx) -> None:
    cands = scored(make_ep, 0.2, 0.9, 0.5, 0.1)
    p = create_plugin("max-score-picker", "p", None)
    assert p.pick(ctx, make_req(), cands) == [cands[1].endpoint, cands[2].endpoint]
    one = create_plugin("max-score-picker", "p", {"maxNumOfEndpoints": 1})
    assert one.pick(ctx, make_req(), cands) == [cands[1].endpoint]
    many = create_plugin("max-score-picker", "p", {"maxNumOfEndpoints": 10})
    assert [e.name for e in many.pick(ctx, make_req(), cands)] == [
        cands[i].endpoint.name for i in (1, 2, 0, 3)]
    assert p.pick(ctx, make_req(), []) == []


def test_max_score_ties_within_float_noise(make_ep, make_req) -> None:
    cands = scored(make_ep, 0.1 + 0.2, 0.3, 0.29)
    p = create_plugin("max-score-picker", "p", {"maxNumOfEndpoints": 1})
    seen = Counter(p.pick(CycleContext(0.0, random.Random(s)), make_req(), cands)[0].name
                   for s in range(200))
    assert set(seen) == {cands[0].endpoint.name, cands[1].endpoint.name}


def test_random_picker_is_uniform_and_seeded(make_ep, make_req) -> None:
    cands = scored(make_ep, 1.0, 0.0, 0.0)
    p = create_plugin("random-picker", "p", {"maxNumOfEndpoints": 1})
    rng = random.Random(5)
    counts = Counter(p.pick(CycleContext(0.0, rng), make_req(), cands)[0].name
                     for _ in range(900))
    assert len(counts) == 3 and min(counts.values()) > 200
    a = p.pick(CycleContext(0.0, random.Random(9)), make_req(), cands)
    b = p.pick(CycleContext(0.0, random.Random(9)), make_req(), cands)
    assert a == b
    two = create_plugin("random-picker", "p", None).pick(CycleContext(0.0, rng), make_req(), cands)
    assert len(two) == 2 and two[0] is not two[1]


def test_weighted_random_follows_scores(make_ep, make_req) -> None:
    cands = scored(make_ep, 3.0, 1.0, 0.0)
    p = create_plugin("weighted-random-picker", "p", None)
    rng = random.Random(11)
    picks = [p.pick(CycleContext(0.0, rng), make_req(), cands) for _ in range(2000)]
    first = Counter(pk[0].name for pk in picks)
    assert cands[2].endpoint.name not in first  # zero weight never first while others exist
    ratio = first[cands[0].endpoint.name] / first[cands[1].endpoint.name]
    assert 2.4 < ratio < 3.8  # ~3:1
    assert all(len(pk) == 2 and pk[0] is not pk[1] for pk in picks)
    zeros = scored(make_ep, 0.0, 0.0)
    counts = Counter(p.pick(CycleContext(0.0, rng), make_req(), zeros)[0].name for _ in range(400))
    assert len(counts) == 2  # all zero: uniform


def test_round_robin_rotates_in_name_order(make_ep, make_req, ctx) -> None:
    eps = [make_ep(i) for i in (2, 0, 1)]
    cands = [ScoredEndpoint(ep, s) for ep, s in zip(eps, (0.0, 9.0, 1.0))]
    p = create_plugin("round-robin-picker", "p", None)
    picks = [p.pick(ctx, make_req(), cands) for _ in range(4)]
    order = sorted(ep.name for ep in eps)
    assert [pk[0].name for pk in picks] == order + order[:1]
    assert [pk[1].name for pk in picks[:3]] == order[1:] + order[:1]
    assert p.pick(ctx, make_req(), cands[:1]) == [cands[0].endpoint]
