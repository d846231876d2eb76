"""The dashboard's feed: the recent-decision ring and the per-second series, bounded."""

from __future__ import annotations

import pytest

from inferoute.core.endpoint import Pool, parse_endpoint
from inferoute.core.request import parse_request
from inferoute.core.router import ModelPool, Router
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.gateway.dashboard.feed import DashboardFeed


def _router(feed: DashboardFeed) -> Router:
    eps = [parse_endpoint(f"http://10.0.0.{i}:8000") for i in (1, 2)]
    mp = ModelPool("m", Pool("m", eps), Scheduler(resolve_config("llm-d"), seed=1))
    mp.scheduler.record_scores = True
    router = Router([mp])
    router.listeners.append(feed)
    return router


def _request(router: Router, i: int, now: float, ttft: float, end: float) -> None:
    req = parse_request("completions", {"model": "m", "prompt": f"p{i} " * 50, "stream": True},
                        {}, request_id=f"r{i}", arrival_time=now)
    d = router.schedule(req, now)
    router.dispatch(d, d.result.target, now)
    router.first_token(d, now + ttft)
    router.finish(d, end, {"prompt_tokens": 50, "completion_tokens": 20})


def test_recent_decisions_carry_scores_newest_first_and_stay_bounded() -> None:
    feed = DashboardFeed(recent=5)
    router = _router(feed)
    for i in range(8):
        _request(router, i, now=float(i), ttft=0.1, end=i + 0.5)
    last = feed.last(10.0)
    assert [d["id"] for d in last] == ["r7", "r6", "r5", "r4", "r3"]
    d = last[0]
    assert d["age"] == pytest.approx(3.0) and d["pool"] == "m" and not d["fallback"]
    assert set(d["scores"]) == {"prefix-cache-scorer", "kv-cache-utilization-scorer",
                                "queue-scorer"}
    assert d["total"] == pytest.approx(3 * d["scores"]["prefix-cache-scorer"]
                                       + 2 * d["scores"]["kv-cache-utilization-scorer"]
                                       + 2 * d["scores"]["queue-scorer"])


def test_series_per_bucket_including_the_current_second() -> None:
    feed = DashboardFeed(history=60)
    router = _router(feed)
    for i in range(10):  # ten requests finishing in second 100, TTFTs 0.1 .. 1.0
        _request(router, i, now=99.0, ttft=1.0 + i / 10 - 0.9, end=100.5)
    s = feed.series(100.7, step=5)
    assert s["seconds"] == 60 and len(s["requests_per_s"]) == 12
    assert s["requests_per_s"][-1] == 10 / 5 and sum(s["requests_per_s"]) == 2
    assert s["output_tokens_per_s"][-1] == 200 / 5
    assert s["ttft_p50"][-1] == pytest.approx(0.6) and s["ttft_p90"][-1] == pytest.approx(1.0)
    assert s["ttft_p50"][0] is None
    # five minutes later the buckets have scrolled out, and the memory is bounded
    later = feed.series(100.7 + 120, step=5)
    assert sum(later["requests_per_s"]) == 0
    for t in range(1000):
        _request(router, 100 + t, now=200.0 + t, ttft=0.1, end=200.5 + t)
    assert len(feed._seconds) <= 61
