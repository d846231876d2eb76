"""`capacity-placement-scorer`: families are placed where the working set is the smallest share
of the KV capacity, stay home, and are copied elsewhere only when the home's backlog of prefill
outweighs recomputing (and evicting) the prefix there."""

import random

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.capacity_placement_scorer import CapacityPlacementScorer
from inferoute.core.request import InferenceRequest, parse_request
from inferoute.core.scheduling.framework import (
    CycleContext,
    ProfileResult,
    SchedulingResult,
)

BLOCK_CHARS = 64  # 16 tokens x 4 characters


def _req(prompt: str, rid: str) -> InferenceRequest:
    return parse_request("completions", {"model": "m", "prompt": prompt, "max_tokens": 16},
                         {}, request_id=rid)


def _eps(blocks: list[int]) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i}", port=8000,
                     metrics=EndpointMetrics(num_blocks=n, block_size=16, scraped_at=0.0))
            for i, n in enumerate(blocks)]


def _send(s: CapacityPlacementScorer, req: InferenceRequest, ep: Endpoint,
          among: list[Endpoint] | None = None) -> None:
    """Score `req` among `among` (default: `ep` alone) and dispatch it to `ep`."""
    ctx = CycleContext(now=0.0, rng=random.Random(0))
    s.score(ctx, req, among or [ep])
    s.on_scheduled(ctx, req, SchedulingResult("default", {"default": ProfileResult(
        "default", [ep])}))


def _scores(s: CapacityPlacementScorer, req: InferenceRequest,
            eps: list[Endpoint]) -> list[float]:
    return list(s.score(CycleContext(now=0.0, rng=random.Random(0)), req, eps))


def _family(letter: str, blocks: int) -> str:
    return letter * (blocks * BLOCK_CHARS)


def test_a_family_goes_home_and_its_prefix_is_what_its_first_two_requests_share() -> None:
    s = CapacityPlacementScorer()
    eps = _eps([1000, 1000])
    prefix = _family("a", 40)
    _send(s, _req(prefix + "x" * (5 * BLOCK_CHARS), "1"), eps[1])
    # seen once: the whole prompt counts in the working set until a second request says more
    assert s.working_set(eps[1].name) == 45 * 16
    assert _scores(s, _req(prefix + "y" * (5 * BLOCK_CHARS), "2"), eps) == [0.0, 1.0]
    _send(s, _req(prefix + "y" * (5 * BLOCK_CHARS), "2"), eps[1])
    assert s.working_set(eps[1].name) == 40 * 16
    assert s.working_set(eps[0].name) == 0


def test_a_new_family_goes_where_the_working_set_is_the_smallest_share_of_capacity() -> None:
    s = CapacityPlacementScorer()
    eps = _eps([1000, 4000])
    assert _scores(s, _req(_family("z", 10), "0"), eps) == [1.0, 1.0]  # a tie: others decide
    _send(s, _req(_family("a", 100), "1"), eps[0])  # 10% of eps[0]
    _send(s, _req(_family("b", 200), "2"), eps[1])  # 5% of eps[1]
    assert _scores(s, _req(_family("c", 10), "3"), eps) == [0.0, 1.0]
    # capacity comes from the scrape: eps[1] shrinks to 1,000 blocks, now 20% full
    eps[1].metrics = EndpointMetrics(num_blocks=1000, block_size=16, scraped_at=1.0)
    assert _scores(s, _req(_family("c", 10), "3"), eps) == [1.0, 0.0]


def test_a_family_spills_only_when_the_home_backlog_outweighs_recompute_and_eviction() -> None:
    eps = _eps([1000, 1000])
    fam = _family("a", 40)
    for spill in (True, False):
        s = CapacityPlacementScorer(params=CapacityPlacementScorer.Params(spill=spill))
        _send(s, _req(fam + "q1", "1"), eps[0])
        _send(s, _req(fam + "q2", "2"), eps[0])
        # the first request's 640 tokens pending at home weigh no more than the whole prompt
        # elsewhere: stay
        assert _scores(s, _req(fam + "q3", "3"), eps) == [1.0, 0.0]
        # unrelated prompts waiting for prefill at home: copying the family now pays
        for i in range(4):
            _send(s, _req(_family(chr(99 + i), 30), f"x{i}"), eps[0])
        expect = [0.0, 1.0] if spill else [1.0, 0.0]
        assert _scores(s, _req(fam + "q4", "4"), eps) == expect
        _send(s, _req(fam + "q4", "4"), eps[1 if spill else 0], eps)
        # the copy is a home now; their first tokens empty the backlog and both homes score 1
        for rid in ("1", "2", "x0", "x1", "x2", "x3", "4"):
            s.on_first_token(_req("", rid), eps[0], 1.0)
        assert _scores(s, _req(fam + "q5", "5"), eps) == ([1.0, 1.0] if spill else [1.0, 0.0])


def test_no_copy_where_the_other_endpoint_has_a_backlog_of_its_own() -> None:
    s = CapacityPlacementScorer()
    eps = _eps([1000, 1000])
    fam = _family("a", 40)
    _send(s, _req(fam + "q1", "1"), eps[0])
    _send(s, _req(fam + "q2", "2"), eps[0])
    for i in range(8):
        _send(s, _req(_family(chr(99 + i), 30), f"x{i}"), eps[0])
    _send(s, _req(_family("w", 60), "y"), eps[1])  # more than this prompt queued there
    # eps[0]'s backlog is far larger, but eps[1] is not idle: a copy would be work added
    assert _scores(s, _req(fam + "q3", "3"), eps) == [1.0, 0.0]


def test_endpoint_removal_and_bounds() -> None:
    s = CapacityPlacementScorer(params=CapacityPlacementScorer.Params(max_families=2))
    eps = _eps([1000, 1000])
    for i, letter in enumerate("abc"):
        _send(s, _req(_family(letter, 20), letter), eps[i % 2])
    assert s.stats()["families"] == 2  # the oldest family was forgotten, and its tokens
    assert s.working_set(eps[0].name) == 20 * 16  # "c" only ("a" forgotten)
    s.on_endpoint_removed(eps[0])
    assert s.working_set(eps[0].name) == 0
    assert s.stats()["queued_prefill_tokens"] == {eps[1].name: 20 * 16}
    # a family whose only home went away is placed afresh
    assert _scores(s, _req(_family("c", 20), "c2"), eps[1:]) == [1.0]


def test_past_capacity_only_the_lru_share_of_a_home_prefix_counts_as_cached() -> None:
    s = CapacityPlacementScorer()
    ep = _eps([50])[0]  # 800 tokens of KV
    queued = lambda: s.stats()["queued_prefill_tokens"][ep.name]
    for letter in "ab":  # two families of a 40-block (640-token) prefix, both homed at ep
        _send(s, _req(_family(letter, 40) + "q1", letter + "1"), ep)
        _send(s, _req(_family(letter, 40) + "q2", letter + "2"), ep)
    assert s.working_set(ep.name) == 1280
    before = queued()
    _send(s, _req(_family("a", 40) + "q3", "a3"), ep)
    # prompt 640 tokens; of the prefix, capacity / working set = 800 / 1280 is taken as cached
    assert queued() - before == 640 - 640 * 800 // 1280
