"""`predictive-cost-scorer`'s balance term: decode work while the KV caches have room, KV demand
when they do not. Demand counts a shared prefix once (what the cache holds); work counts every
request's whole context (what each decode step reads). A replica with many requests of one
prompt family has little demand but much work, so the two send a new request apart."""

import random

import pydantic
import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.predictive_cost_scorer import PredictiveCostScorer
from inferoute.core.request import parse_request
from inferoute.core.scheduling.framework import CycleContext

BLOCK_CHARS = 64  # 16 tokens x 4 characters: one KV block of prompt text


def _req(prompt: str, rid: str):
    return parse_request("completions", {"model": "m", "prompt": prompt, "max_tokens": 16}, {},
                         request_id=rid)


def _ctx() -> CycleContext:
    return CycleContext(now=0.0, rng=random.Random(0))


def _loaded(capacity: int, **params: float):
    params = {"pressure_low": 0.5, "pressure_high": 1.0, **params}
    s = PredictiveCostScorer(params=PredictiveCostScorer.Params(
        prefill_weight=12.0, queue_weight=0.0, overflow_weight=0.0, **params))
    eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                    metrics=EndpointMetrics(num_blocks=capacity, block_size=16, scraped_at=0.0))
           for i in range(2)]
    family = "f" * (10 * BLOCK_CHARS)
    # endpoint 0: three requests of one family, 10 shared blocks + 1 own block + 1 output each
    for i in range(3):
        r = _req(family + chr(97 + i) * BLOCK_CHARS, f"fam{i}")
        s._account(0.0, r, eps[0], s._cycle(_ctx(), r))
    # endpoint 1: two unrelated 10-block prompts + 1 output block each
    for i in range(2):
        r = _req(chr(65 + i) * (10 * BLOCK_CHARS), f"u{i}")
        s._account(0.0, r, eps[1], s._cycle(_ctx(), r))
    return s, eps


NEW = _req("z" * (10 * BLOCK_CHARS), "new")  # cached nowhere: only the balance term differs


def test_demand_counts_a_shared_prefix_once_and_work_once_per_request() -> None:
    s, eps = _loaded(10_000)
    assert [s._state[ep.name].demand for ep in eps] == [10 + 3 + 3, 20 + 2]
    assert [s._state[ep.name].work for ep in eps] == [3 * 12, 2 * 11]


def test_with_room_the_replica_with_less_decode_work_wins() -> None:
    s, eps = _loaded(10_000)  # mean demand / capacity 0.002: all work
    c = s.costs(_ctx(), NEW, eps)
    assert c[1] - c[0] == pytest.approx(-(3 * 12 - 2 * 11))


def test_under_pressure_the_replica_with_less_kv_demand_wins() -> None:
    s, eps = _loaded(16)  # mean demand / capacity (16/16 + 22/16) / 2 = 1.19 >= 1: all demand
    c = s.costs(_ctx(), NEW, eps)
    assert c[0] - c[1] == pytest.approx((16 + 11) - (22 + 11))


def test_between_the_thresholds_the_terms_blend() -> None:
    # pressure (16/40 + 22/40) / 2 = 0.475: demand share (0.475 - 0.35) / (0.6 - 0.35) = 0.5
    s, eps = _loaded(40, pressure_low=0.35, pressure_high=0.6)
    c = s.costs(_ctx(), NEW, eps)
    a, prefill = 0.5, 12 * 10
    expect = [a * (16 + 11) + (1 - a) * (36 + 11) + prefill,
              a * (22 + 11) + (1 - a) * (22 + 11) + prefill]
    assert c == pytest.approx(expect)


def test_by_default_the_balance_term_is_kv_demand_whatever_the_load() -> None:
    s, eps = _loaded(10_000, pressure_low=0.0, pressure_high=0.0)
    c = s.costs(_ctx(), NEW, eps)
    assert c[0] - c[1] == pytest.approx((16 + 11) - (22 + 11))
    assert PredictiveCostScorer.Params().pressure_high == 0.0


def test_finishing_requests_release_their_work() -> None:
    s, eps = _loaded(10_000)
    for i in range(3):
        s.on_finished(_req("x", f"fam{i}"), eps[0], 1.0, None)
    assert s._state[eps[0].name].work == 0 and s._state[eps[0].name].demand == 0
    assert s._state[eps[1].name].work == 22


def test_pressure_thresholds_out_of_order_are_a_config_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="pressureLow must not exceed"):
        PredictiveCostScorer.Params(pressure_low=1.0, pressure_high=0.5)
