"""Retry backoff, the upstream timeouts and limits of the serving config, and the data layer's
preference for endpoints with fresh metrics (no sockets; injected clock)."""

from __future__ import annotations

import pytest

from inferoute.core.clock import ManualClock
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.errors import ConfigError
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.runtime import DataLayer
from inferoute.core.retryplan import retry_delay

POOL = {"model": "m", "endpoints": ["http://a:1", "http://b:2", "http://c:3"]}


def test_retry_delay_never_delays_a_first_attempt() -> None:
    assert retry_delay(0, 0.025, 0.25, rand=lambda: 1.0) == 0.0


def test_retry_delay_doubles_up_to_the_cap_with_full_jitter() -> None:
    top = [retry_delay(k, 0.025, 0.25, rand=lambda: 1.0) for k in range(1, 7)]
    assert top == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25])
    assert retry_delay(3, 0.025, 0.25, rand=lambda: 0.5) == pytest.approx(0.05)
    assert retry_delay(2, 0.025, 0.25, rand=lambda: 0.0) == 0.0
    assert retry_delay(2, 0.0, 0.25, rand=lambda: 1.0) == 0.0  # retryBackoff: 0 turns it off
    samples = {retry_delay(2, 0.025, 0.25) for _ in range(50)}
    assert len(samples) > 1 and all(0 <= s < 0.05 for s in samples)


def test_upstream_timeouts_defaults_and_read_timeout_alias() -> None:
    up = parse_serving_config({"pools": [POOL]}).upstream
    assert (up.first_byte_timeout, up.idle_timeout) == (600.0, 120.0)
    assert (up.retry_backoff, up.retry_backoff_max) == (0.025, 0.25)
    up = parse_serving_config({"pools": [POOL], "upstream": {"readTimeout": "5m"}}).upstream
    assert (up.first_byte_timeout, up.idle_timeout) == (300.0, 300.0)
    up = parse_serving_config({"pools": [POOL], "upstream": {
        "readTimeout": "5m", "idleTimeout": "30s", "retryBackoff": "10ms"}}).upstream
    assert (up.first_byte_timeout, up.idle_timeout, up.retry_backoff) == (300.0, 30.0, 0.01)
    with pytest.raises(ConfigError, match="upstream.idleTimeout"):
        parse_serving_config({"pools": [POOL], "upstream": {"idleTimeout": 0}})


def test_serving_limits() -> None:
    cfg = parse_serving_config({"pools": [POOL]})
    assert (cfg.max_header_bytes, cfg.max_concurrent_requests) == (8190, 4096)
    cfg = parse_serving_config({"pools": [POOL], "maxHeaderBytes": 32768,
                                "maxConcurrentRequests": 10})
    assert (cfg.max_header_bytes, cfg.max_concurrent_requests) == (32768, 10)
    with pytest.raises(ConfigError, match="maxConcurrentRequests"):
        parse_serving_config({"pools": [POOL], "maxConcurrentRequests": 0})
    with pytest.raises(ConfigError, match="maxHeaderBytes"):
        parse_serving_config({"pools": [POOL], "maxHeaderBytes": 10})


def test_candidates_prefer_endpoints_with_fresh_metrics() -> None:
    clock = ManualClock(100.0)
    data = DataLayer(parse_serving_config({"pools": [POOL]}), clock=clock.now)
    mp = data.router.pools["m"]
    a, b, c = mp.pool.endpoints()
    for ep in (a, b, c):
        ep.metrics = EndpointMetrics(scraped_at=100.0)
    assert data.ready_endpoints(mp) == [a, b, c]
    clock.advance(1.0)
    a.metrics = EndpointMetrics(scraped_at=101.0)  # b and c froze 1 s ago
    assert data.ready_endpoints(mp) == [a]
    assert data.ready_endpoints(mp, prefer_fresh=False) == [a, b, c]  # all still ready
    assert data.ready_count() == 3
    clock.advance(1.0)  # none fresh: every ready endpoint is offered
    assert data.ready_endpoints(mp) == [a, b, c]
    clock.advance(4.0)  # past the 5 s ready window for b and c
    assert data.ready_endpoints(mp) == [a]


def test_fresh_window_follows_the_scheduler_and_the_scrape_period() -> None:
    sched = {"plugins": [{"type": "round-robin-picker"}],
             "schedulingProfiles": [{"name": "default",
                                     "plugins": [{"pluginRef": "round-robin-picker"}]}],
             "saturationDetector": {"metricsStalenessThreshold": "500ms"}}
    def fresh_window(data: DataLayer) -> float:
        mp = data.router.pools["m"]
        threshold = mp.scheduler.config.saturation_detector.metrics_staleness_threshold
        return data.router.rule.fresh_window(threshold)

    assert fresh_window(DataLayer(parse_serving_config(
        {"pools": [dict(POOL, scheduler=sched)]}))) == 0.5
    assert fresh_window(DataLayer(parse_serving_config(
        {"pools": [POOL], "scrapeInterval": "1s"}))) == 2.0  # never under two scrape periods


async def test_idle_watch_counts_only_time_spent_reading() -> None:
    """The idle timeout of a relayed stream: time spent writing to a slow client is not idle;
    a read waiting longer than `idle` fires it once."""
    import asyncio

    from inferoute.gateway.proxy import _IdleWatch

    calls: list[int] = []
    watch = _IdleWatch(0.02, lambda: calls.append(1))
    await asyncio.sleep(0.1)  # "writing": never idle however long
    assert not watch.fired and calls == []
    watch.reading = True
    await asyncio.sleep(0.1)
    assert watch.fired and calls == [1]
    watch.cancel()
