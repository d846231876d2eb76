"""The admission driver the gateway and the picker share: queued requests wait, are released
when capacity returns, expire with 429, leave the queue when cancelled, and get 503 at shutdown
(no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from inferoute.core.admission import parse_admission_config
from inferoute.core.clock import ManualClock
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.errors import NoEndpointAvailable, TooManyRequests
from inferoute.core.request import parse_request
from inferoute.datalayer.admission_driver import AdmissionDriver
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import parse_serving_config


@pytest.fixture
def setup():
    clock = ManualClock(100.0)
    cfg = parse_serving_config({"pools": [{"model": "m", "endpoints": ["http://10.0.0.1:8000"]}]})
    data = DataLayer(cfg, clock=clock.now, scrape=False)
    adm = parse_admission_config({
        "objectives": [{"name": "batch", "priority": -1}],
        "flowControl": {"ttl": "1s"},
        "modelRoutes": [{"model": "alias", "targets": [{"model": "m"}]}]})
    runner = AdmissionDriver(adm, data)
    mp = data.router.pools["m"]
    ep = mp.pool.endpoints()[0]
    return clock, runner, mp, ep


def request(model: str = "m", objective: str | None = None):
    headers = {"x-gateway-inference-objective": objective} if objective else {}
    return parse_request("completions", {"model": model, "prompt": "hi"}, headers,
                         request_id="r")


async def test_queue_release_expiry_and_cancel(setup):
    clock, runner, mp, ep = setup
    ep.metrics = EndpointMetrics(waiting=50, scraped_at=clock.now())  # saturated
    with pytest.raises(TooManyRequests):
        runner.check(request(objective="batch"), mp, clock.now())
    ticket = runner.check(request(), mp, clock.now())
    assert ticket is not None
    waiter = asyncio.ensure_future(runner.wait(ticket))
    await asyncio.sleep(0)
    assert not waiter.done()
    ep.metrics = EndpointMetrics(waiting=0, scraped_at=clock.now())  # capacity is back
    runner.pump()
    await asyncio.wait_for(waiter, 1)

    ep.metrics = EndpointMetrics(waiting=50, scraped_at=clock.now())
    expiring = asyncio.ensure_future(runner.wait(runner.check(request(), mp, clock.now())))
    await asyncio.sleep(0)
    clock.advance(2.0)
    runner.pump()
    with pytest.raises(TooManyRequests):
        await expiring

    cancelled_ticket = runner.check(request(), mp, clock.now())
    cancelled = asyncio.ensure_future(runner.wait(cancelled_ticket))
    await asyncio.sleep(0)
    assert runner.controller.queued("m") == 1
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert runner.controller.queued("m") == 0


async def test_close_answers_waiting_requests_with_503(setup):
    clock, runner, mp, ep = setup
    ep.metrics = EndpointMetrics(waiting=50, scraped_at=clock.now())
    runner.start()
    waiter = asyncio.ensure_future(runner.wait(runner.check(request(), mp, clock.now())))
    await asyncio.sleep(0)
    await runner.close()
    with pytest.raises(NoEndpointAvailable):
        await waiter


def test_model_routes_set_the_target(setup):
    _, runner, _, _ = setup
    r = request(model="alias")
    runner.route_model(r)
    assert (r.model, r.target_model) == ("alias", "m")


async def test_admit_waits_and_reports_the_time_waited(setup):
    """The gateway's one call: check, then wait for the ticket; seconds waited come back."""
    clock, runner, mp, ep = setup
    ep.metrics = EndpointMetrics(waiting=0, scraped_at=clock.now())
    assert await runner.admit(request(), mp, clock.now()) == 0.0  # capacity: no wait
    ep.metrics = EndpointMetrics(waiting=50, scraped_at=clock.now())
    admitted = asyncio.ensure_future(runner.admit(request(), mp, clock.now()))
    while runner.controller.queued("m") == 0 and not admitted.done():
        await asyncio.sleep(0)
    assert not admitted.done()
    clock.advance(0.5)
    ep.metrics = EndpointMetrics(waiting=0, scraped_at=clock.now())
    runner.pump()
    assert await asyncio.wait_for(admitted, 1) == 0.5


def test_admission_counts_room_only_where_the_scheduler_may_send() -> None:
    """A replica whose scrape runs late is out of the scheduler's candidates while another is
    live; its room must not admit requests that would all go to the live one (seen: 23 requests
    piled on one simulator, none on the other, nothing held in the gateway)."""
    clock = ManualClock(100.0)
    cfg = parse_serving_config({"pools": [{"model": "m", "endpoints": [
        "http://10.0.0.1:8000", "http://10.0.0.2:8000"]}]})
    data = DataLayer(cfg, clock=clock.now, scrape=True)  # scraped: stale endpoints exist
    adm = parse_admission_config({"saturationDetector": {"metricsStalenessThreshold": "2s"}})
    driver = AdmissionDriver(adm, data)
    mp = data.router.pools["m"]
    live, late = mp.pool.endpoints()
    live.metrics = EndpointMetrics(running=8, waiting=50, scraped_at=100.0)  # full
    late.metrics = EndpointMetrics(scraped_at=99.0)  # idle, but its scrape is 1 s old
    assert data.router.candidates(mp, clock.now()) == [live]
    assert driver.check(request(), mp, clock.now()) is not None  # it waits in the gateway
