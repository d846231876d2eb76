"""Saturation detector: thresholds as in the reference (strictly above is saturated),
staleness, empty pools, headroom."""

from __future__ import annotations

from inferoute.core.admission.saturation import SaturationDetector
from inferoute.core.scheduling.config import SaturationSpec


def test_endpoint_reasons(ep) -> None:
    d = SaturationDetector()
    now = 1.0
    assert d.endpoint_state(ep(waiting=5, kv_usage=0.8, scraped_at=0.9), now).reason == "ok"
    assert d.endpoint_state(ep(waiting=6, scraped_at=0.9), now).reason == "queue"
    assert d.endpoint_state(ep(kv_usage=0.81, waiting=1, scraped_at=0.9), now).reason == "kv-cache"
    # 200 ms is still fresh, 201 ms is stale; never scraped is stale
    assert d.endpoint_state(ep(scraped_at=0.8), now).reason == "ok"
    assert d.endpoint_state(ep(scraped_at=0.799), now).reason == "stale"
    assert d.endpoint_state(ep(scraped_at=None), now).reason == "stale"


def test_kv_usage_saturates_only_with_a_queue_unless_always(ep) -> None:
    """A full batch with nothing waiting still takes what it is sent (`kvCacheRule: queued`,
    the default); the reference's rule (`always`) counts the usage on its own."""
    queued = SaturationDetector()
    always = SaturationDetector(SaturationSpec.model_validate({"kvCacheRule": "always"}))
    full_batch = ep(kv_usage=0.97, waiting=0, scraped_at=1.0)
    full_with_queue = ep(kv_usage=0.97, waiting=1, scraped_at=1.0)
    assert queued.endpoint_state(full_batch, 1.0).reason == "ok"
    assert queued.endpoint_state(full_with_queue, 1.0).reason == "kv-cache"
    assert always.endpoint_state(full_batch, 1.0).reason == "kv-cache"
    assert not queued.is_saturated([full_batch], 1.0)
    assert always.is_saturated([full_batch], 1.0)
    assert queued.room(full_batch, 1.0) == 6 and always.room(full_batch, 1.0) is None


def test_pool_saturated_only_when_every_endpoint_is(ep) -> None:
    d = SaturationDetector()
    busy = ep(0, waiting=9, scraped_at=1.0)
    full = ep(1, kv_usage=0.95, waiting=2, scraped_at=1.0)
    idle = ep(2, waiting=0, scraped_at=1.0)
    assert d.is_saturated([busy, full], 1.0)
    assert not d.is_saturated([busy, full, idle], 1.0)
    assert d.is_saturated([busy, full, idle], 1.5)  # all stale now
    assert d.is_saturated([], 1.0)


def test_custom_thresholds(ep) -> None:
    spec = SaturationSpec.model_validate({"queueDepthThreshold": 0, "kvCacheUtilThreshold": 0.5,
                                          "metricsStalenessThreshold": "1s"})
    d = SaturationDetector(spec)
    assert d.is_endpoint_saturated(ep(waiting=1, scraped_at=0.0), 0.5)
    assert not d.is_endpoint_saturated(ep(waiting=0, kv_usage=0.5, scraped_at=0.0), 1.0)
    assert d.is_endpoint_saturated(ep(waiting=0, scraped_at=0.0), 1.01)


def test_headroom_counts_queue_slots_of_good_endpoints(ep) -> None:
    d = SaturationDetector()
    eps = [ep(0, waiting=0, scraped_at=1.0), ep(1, waiting=4, scraped_at=1.0),
           ep(2, waiting=7, scraped_at=1.0)]
    assert d.headroom(eps, 1.0) == 6 + 2  # the saturated one gives nothing
    assert d.oldest_fresh_scrape(eps, 1.1) == 1.0


def test_stale_in_flight_limit_degrades_to_concurrency_limit(ep) -> None:
    d = SaturationDetector(stale_in_flight_limit=3)
    e = ep(scraped_at=None)
    assert not d.is_saturated([e], 5.0)
    assert d.headroom([e], 5.0) == 3
    e.in_flight_requests = 3
    assert d.is_saturated([e], 5.0)
    assert d.headroom([e], 5.0) == 0
