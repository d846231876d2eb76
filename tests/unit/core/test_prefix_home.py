"""Prompt-family homes: rendezvous ranks are stable and spread, and `predictive-cost-scorer`'s
`homeWeight` sends a family nobody holds to its home instead of to the least loaded endpoint."""

import random

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.predictive_cost_scorer import PredictiveCostScorer
from inferoute.core.plugins.prefixhome import family_key, home_ranks
from inferoute.core.request import parse_request
from inferoute.core.scheduling.framework import CycleContext

BLOCK_CHARS = 64


def test_family_key_is_the_kth_block_or_the_last_full_one() -> None:
    assert family_key([], 8) is None
    assert family_key([1, 2, 3], 8) == 3
    assert family_key(list(range(1, 20)), 8) == 8


def test_home_ranks_are_a_permutation_stable_under_reordering_and_removal() -> None:
    names = [f"ep{i}" for i in range(8)]
    for key in range(50):
        ranks = home_ranks(key, names)
        assert sorted(ranks) == list(range(8))
        rev = home_ranks(key, names[::-1])
        assert rev == ranks[::-1]
        # removing a non-home endpoint never moves the home
        home = names[ranks.index(0)]
        rest = [n for n in names if n != home][1:] + [home]
        assert home_ranks(key, rest)[rest.index(home)] == 0
    homes = [home_ranks(key, names).index(0) for key in range(800)]
    assert min(homes.count(i) for i in range(8)) > 60  # 100 each on average


def _req(prompt: str, rid: str):
    return parse_request("completions", {"model": "m", "prompt": prompt, "max_tokens": 16},
                         {}, request_id=rid)


def _ctx() -> CycleContext:
    return CycleContext(now=0.0, rng=random.Random(0))


def _pick(home_weight: float, prompt: str) -> tuple[int, int]:
    """(endpoint chosen, the family's home) for `prompt` with unrelated load on the home."""
    eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                    metrics=EndpointMetrics(num_blocks=10_000, block_size=16, scraped_at=0.0))
           for i in range(4)]
    s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
        queue_weight=0.0, home_weight=home_weight))
    req = _req(prompt, "new")
    key = family_key(s._cycle(_ctx(), req)["hashes"], 8)
    home = home_ranks(key, [e.name for e in eps]).index(0)
    # one unrelated 20-block request in flight at the home: it is no longer the least loaded
    busy = _req("z" * (20 * BLOCK_CHARS), "busy")
    s._account(0.0, busy, eps[home], s._cycle(_ctx(), busy))
    costs = s.costs(_ctx(), req, eps)
    return costs.index(min(costs)), home


def test_home_weight_sends_an_unheld_family_home_despite_a_small_load_gap() -> None:
    prompt = "q" * (30 * BLOCK_CHARS)
    chosen, home = _pick(0.0, prompt)
    assert chosen != home  # without homes: the least loaded endpoint
    chosen, home = _pick(2.0, prompt)
    assert chosen == home  # 30 uncached blocks x >= 1 elsewhere outweigh a 21-block demand gap


def test_blocks_past_max_prefix_blocks_count_as_demand_and_are_released() -> None:
    s = PredictiveCostScorer(params=PredictiveCostScorer.Params(max_prefix_blocks=8))
    ep = Endpoint(host="10.0.0.9", port=8000,
                  metrics=EndpointMetrics(num_blocks=10_000, block_size=16, scraped_at=0.0))
    long_req, short_req = _req("a" * (30 * BLOCK_CHARS), "long"), _req("b" * (5 * BLOCK_CHARS),
                                                                      "short")
    for r in (long_req, short_req):
        s._account(0.0, r, ep, s._cycle(_ctx(), r))
    st = s._state[ep.name]
    assert len(s._cycle(_ctx(), long_req)["hashes"]) == 8  # only 8 blocks hashed
    # 8 hashed + 22 past the cap for the long prompt, 5 for the short one, 1 output block each
    assert st.demand == 8 + 22 + 5 + 2 and st.tail == 22
    s.on_finished(long_req, ep, 1.0, None)
    assert st.demand == 5 + 1 and st.tail == 0
