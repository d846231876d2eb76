"""`inferoute_pool_desired_replicas`: exported when `autoscaling:` is configured, fed by the
router's requests."""

from __future__ import annotations

import math

import pytest

from inferoute.core.clock import ManualClock
from inferoute.core.endpoint import EndpointMetrics, parse_endpoint
from inferoute.core.request import parse_request
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.runtime import DataLayer
from inferoute.observability import Observability


def _data(clock: ManualClock, **extra: object) -> DataLayer:
    return DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://a:1", "http://b:2"]}], **extra}), clock=clock.now)


def _serve(data: DataLayer, clock: ManualClock, *, ttft: float, prompt_tokens: int) -> None:
    """A minute of 10 req/s through the router, each streamed with `ttft` and done at 1 s."""
    for i in range(600):
        now = i / 10
        clock.set(now)
        for ep in data.router.pools["m"].pool:  # freshly scraped: candidates for the router
            ep.metrics = EndpointMetrics(running=1, kv_usage=0.01, scraped_at=now)
        req = parse_request("completions", {"model": "m", "prompt": "hi", "stream": True}, {},
                            request_id=f"r{i}", arrival_time=now)
        d = data.router.schedule(req, now)
        data.router.dispatch(d, d.result.target, now)
        data.router.first_token(d, now + ttft)
        data.router.finish(d, now + 1.0, {"prompt_tokens": prompt_tokens,
                                          "completion_tokens": 10})


def test_gauge_follows_the_router() -> None:
    clock = ManualClock(0.0)
    data = _data(clock, autoscaling={"ttftTarget": "1s", "maxReplicas": 10})
    obs = Observability()
    obs.watch(data)
    obs.watch(data)  # the gateway calls it twice: one listener only
    assert len(data.router.listeners) == 1
    for ep in data.router.pools["m"].pool:
        ep.metrics = EndpointMetrics(running=1, kv_usage=0.01, scraped_at=0.0)
    page = obs.render()[0].decode()
    assert 'inferoute_pool_desired_replicas{name="m"} 1.0' in page  # no load: minReplicas
    # 10 req/s, 8000 uncached tokens at 10,000 tokens/s: x = 0.8 s
    _serve(data, clock, ttft=0.8, prompt_tokens=8000)
    for ep in data.router.pools["m"].pool:
        ep.metrics = EndpointMetrics(running=1, kv_usage=0.01, scraped_at=clock.now())
    est = obs.autoscaler.estimate("m", clock.now(), data.router.pools["m"].pool)
    assert est.measured and est.desired == 10  # 8 s of work a second, tight target: capped
    page = obs.render()[0].decode()
    assert 'inferoute_pool_desired_replicas{name="m"} 10.0' in page


def test_no_section_no_gauge() -> None:
    obs = Observability()
    data = _data(ManualClock(0.0))
    obs.watch(data)
    assert obs.autoscaler is None and not data.router.listeners
    assert "inferoute_pool_desired_replicas{" not in obs.render()[0].decode()


def test_the_gauge_is_the_real_count() -> None:
    """The HPA rounds the metric up after its 10% tolerance: a real count lets it keep 4
    replicas for 4.3 (a forecast's noise), where a whole 5 would scale."""
    clock = ManualClock(0.0)
    data = _data(clock, autoscaling={"ttftTarget": "1s", "maxReplicas": 100})
    obs = Observability()
    obs.watch(data)
    _serve(data, clock, ttft=0.4, prompt_tokens=4000)  # 10 req/s of 0.4-s prefills
    est = obs.autoscaler.estimate("m", clock.now(), data.router.pools["m"].pool)
    assert est.replicas is not None and est.replicas != int(est.replicas)
    assert est.desired == math.ceil(est.replicas) == math.ceil(est.gauge)
    page = obs.render()[0].decode()
    line = next(x for x in page.splitlines()
                if x.startswith('inferoute_pool_desired_replicas{name="m"}'))
    assert float(line.split()[-1]) == pytest.approx(est.gauge)


def test_the_data_layer_lists_the_replicas_starting() -> None:
    """A listed endpoint never scraped is starting from when it was added; once scraped it is
    ready, and later stale (down), never starting again; discovery's report adds replicas
    outside the pool (pods not ready yet) and dates the pool's endpoints it names."""
    clock = ManualClock(5.0)
    data = _data(clock)
    a, b = data.router.pools["m"].pool
    assert sorted(data.starting("m")) == [5.0, 5.0]
    a.metrics = EndpointMetrics(scraped_at=6.0)
    clock.set(7.0)
    assert data.starting("m") == [5.0]
    c = data.add_endpoint("m", parse_endpoint("http://c:3"))
    assert sorted(data.starting("m")) == [5.0, 7.0]
    data.set_starting("m", {"ns/pod#8000": 2.0, c.name: 3.0})
    assert sorted(data.starting("m")) == [2.0, 3.0, 5.0]
    clock.set(100.0)  # a's last scrape is old: not ready, and not starting either
    assert not data.is_ready(a) and sorted(data.starting("m")) == [2.0, 3.0, 5.0]
    data.remove_endpoint("m", b.name)
    data.set_starting("m", {})
    assert data.starting("m") == [7.0]


def test_the_gauge_counts_the_replicas_starting() -> None:
    """The exported gauge passes the replicas on their way to the estimator (before, only the
    ready ones: the backlog term asked again, at every sync of a rise, for what the starting
    replicas would take)."""
    clock = ManualClock(0.0)
    data = _data(clock, autoscaling={"ttftTarget": "1s", "maxReplicas": 100})
    obs = Observability()
    obs.watch(data)
    _serve(data, clock, ttft=0.4, prompt_tokens=4000)  # 10 req/s of 0.4-s work on 2 replicas
    now = clock.now()
    for ep in data.router.pools["m"].pool:
        ep.metrics = EndpointMetrics(running=1, kv_usage=0.01, scraped_at=now)
    data.set_starting("m", {"ns/pod#8000": now - 45})  # serves in 15 s
    ready = list(data.router.pools["m"].pool)
    assert obs.autoscaler is not None
    with_starting = obs.autoscaler.estimate("m", now, ready, [now - 45])
    alone = obs.autoscaler.estimate("m", now, ready)
    assert with_starting.gauge < alone.gauge
    page = obs.render()[0].decode()
    line = next(x for x in page.splitlines()
                if x.startswith('inferoute_pool_desired_replicas{name="m"}'))
    assert float(line.split()[-1]) == pytest.approx(with_starting.gauge)
