"""Load scorers: queue, running, KV-cache utilisation, llm-d load-aware, in-flight."""

from __future__ import annotations

import pytest

from inferoute.core.scheduling.registry import create_plugin


def score(type_name, ctx, req, eps, **params):
    return list(create_plugin(type_name, type_name, params).score(ctx, req, eps))


def test_queue_scorer_min_max(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, waiting=0), make_ep(1, waiting=5), make_ep(2, waiting=10)]
    assert score("queue-scorer", ctx, make_req(), eps) == [1.0, 0.5, 0.0]
    same = [make_ep(0, waiting=3), make_ep(1, waiting=3)]
    assert score("queue-scorer", ctx, make_req(), same) == [1.0, 1.0]


def test_running_requests_size_scorer(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, running=40), make_ep(1, running=10), make_ep(2, running=20)]
    assert score("running-requests-size-scorer", ctx, make_req(), eps) == pytest.approx(
        [0.0, 1.0, 2 / 3])


def test_kv_cache_utilization_scorer(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, kv_usage=0.0), make_ep(1, kv_usage=0.25), make_ep(2, kv_usage=1.0),
           make_ep(3, kv_usage=1.3)]
    assert score("kv-cache-utilization-scorer", ctx, make_req(), eps) == [1.0, 0.75, 0.0, 0.0]


def test_load_aware_scorer_matches_llm_d(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, waiting=0), make_ep(1, waiting=64), make_ep(2, waiting=128),
           make_ep(3, waiting=500)]
    assert score("load-aware-scorer", ctx, make_req(), eps) == [0.5, 0.25, 0.0, 0.0]
    assert score("load-aware-scorer", ctx, make_req(), eps[:2], threshold=256) == [0.5, 0.375]
    # absolute, not relative: one endpoint alone still scores by its own queue
    assert score("load-aware-scorer", ctx, make_req(), [eps[1]]) == [0.25]


def test_in_flight_scorer_uses_gateway_bookkeeping(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, in_flight=4, waiting=0), make_ep(1, in_flight=0, waiting=9)]
    assert score("in-flight-scorer", ctx, make_req(), eps) == [0.0, 1.0]
    eps[0].in_flight_tokens, eps[1].in_flight_tokens = 100, 300
    assert score("in-flight-scorer", ctx, make_req(), eps, by="tokens") == [1.0, 0.0]
    eps[0].on_finish(0)
    eps[0].in_flight_requests = 0
    assert score("in-flight-scorer", ctx, make_req(), eps) == [1.0, 1.0]
