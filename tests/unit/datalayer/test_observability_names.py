"""The Prometheus page: EPP metric names and labels, pool gauges, endpoint series lifecycle."""

from __future__ import annotations

from inferoute.core.clock import ManualClock
from inferoute.core.endpoint import EndpointMetrics, parse_endpoint
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.runtime import DataLayer
from inferoute.observability import Observability


def _page(obs: Observability) -> str:
    body, ctype = obs.render()
    assert ctype.startswith("text/plain")
    return body.decode()


def test_request_life_cycle_and_pool_gauges():
    clock = ManualClock(50.0)
    data = DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://a:1", "http://b:2"]}]}), clock=clock.now)
    a, b = data.router.pools["m"].pool.endpoints()
    a.metrics = EndpointMetrics(waiting=4, kv_usage=0.5, scraped_at=50.0)
    b.metrics = EndpointMetrics(waiting=2, kv_usage=0.3, scraped_at=50.0)
    obs = Observability()
    obs.watch(data)
    obs.request_started("m", "m", body_bytes=300)
    obs.scheduled(0.0004, prefix_hit_ratio=0.75)
    obs.dispatched("m", "a:1")
    page = _page(obs)
    assert 'inference_objective_running_requests{model_name="m"} 1.0' in page
    assert 'inferoute_endpoint_in_flight_requests{endpoint="a:1",pool="m"} 1.0' in page
    assert 'inferoute_endpoint_in_flight_requests{endpoint="b:2",pool="m"} 0.0' in page
    assert 'inference_pool_ready_pods{name="m"} 2.0' in page
    assert 'inference_pool_average_queue_size{name="m"} 3.0' in page
    assert 'inference_pool_average_kv_cache_utilization{name="m"} 0.4' in page
    assert "inference_extension_scheduler_e2e_duration_seconds_count 1.0" in page
    assert 'inference_extension_prefix_indexer_hit_ratio_bucket{le="0.8"} 1.0' in page

    obs.released("m", "a:1")
    obs.request_finished("m", "m", latency=2.0, ttft=0.1, response_bytes=900,
                         usage={"prompt_tokens": 70, "completion_tokens": 10})
    obs.request_rejected("unknown", "unknown", "404")
    page = _page(obs)
    assert 'inference_objective_request_total{model_name="m",target_model_name="m"} 1.0' in page
    assert ('inference_objective_request_error_total{error_code="404",model_name="unknown",'
            'target_model_name="unknown"} 1.0') in page
    assert 'inference_objective_running_requests{model_name="m"} 0.0' in page
    assert ('inference_objective_output_tokens_sum{model_name="m",target_model_name="m"} 10.0'
            in page)
    assert ('inference_objective_normalized_time_per_output_token_seconds_sum{model_name="m",'
            'target_model_name="m"} 0.2') in page

    clock.advance(6)  # both scrapes are now older than the 5 s ready window
    data.add_endpoint("m", parse_endpoint("http://c:3"))
    data.router.pools["m"].pool.remove("a:1")
    page = _page(obs)
    assert 'inference_pool_ready_pods{name="m"} 0.0' in page
    assert 'endpoint="a:1"' not in page and 'endpoint="c:3"' in page


def test_flow_control_gauges_show_the_queue_and_the_reserve():
    from inferoute.core.admission.flowcontrol import QueueStats
    obs = Observability()
    data = DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://a:1"]}]}), clock=ManualClock(1.0).now)
    obs.watch(data, lambda: {"m": QueueStats(3, 900, {10: 1, 0: 2}, reserved=2,
                                             top_arrivals=40, top_without_slot=3)})
    page = _page(obs)
    assert 'inference_extension_flow_control_queue_size{inference_pool="m",priority="all"} 3.0' \
        in page
    assert 'inference_extension_flow_control_queue_bytes{inference_pool="m"} 900.0' in page
    assert 'inferoute_flow_control_reserved_slots{inference_pool="m"} 2.0' in page
    assert 'inferoute_flow_control_top_priority_requests_total{inference_pool="m"} 40.0' in page
    assert ('inferoute_flow_control_top_priority_without_free_slot_total{inference_pool="m"} '
            '3.0') in page


def test_a_priority_band_that_empties_reads_zero():
    """The queue drops an empty band from its stats; its series must not keep its last size
    (found by `inferoute epp` holding requests: priority 0 read 20 after they all went)."""
    from inferoute.core.admission.flowcontrol import QueueStats
    obs = Observability()
    data = DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://a:1"]}]}), clock=ManualClock(1.0).now)
    stats = {"m": QueueStats(3, 900, {10: 1, 0: 2})}
    obs.watch(data, lambda: stats)
    assert 'queue_size{inference_pool="m",priority="0"} 2.0' in _page(obs)
    stats["m"] = QueueStats(1, 300, {10: 1})
    page = _page(obs)
    assert 'queue_size{inference_pool="m",priority="0"} 0.0' in page
    assert 'queue_size{inference_pool="m",priority="10"} 1.0' in page
    assert 'queue_size{inference_pool="m",priority="all"} 1.0' in page
