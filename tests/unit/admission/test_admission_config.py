"""The `admission:` config section: parsing, defaults, durations/sizes, clear errors."""

from __future__ import annotations

import pytest

from inferoute.configfiles import load_admission_config
from inferoute.core.admission import AdmissionConfig, Admitted, parse_admission_config
from inferoute.core.admission.flowcontrol import parse_size
from inferoute.core.errors import ConfigError

FULL = """
admission:
  saturationDetector: {queueDepthThreshold: 2, kvCacheUtilThreshold: 0.9,
                       metricsStalenessThreshold: 500ms}
  staleInFlightLimit: 8
  objectives:
  - {name: critical, priority: 10}
  - {name: batch, priority: -1, ttl: 5s}
  defaultObjective: critical
  flowControl: {ordering: edf, ttl: 1m, maxRequests: 10, maxBytes: 2MiB, retryAfter: 3s}
  modelRoutes:
  - model: chat
    targets: [{model: a, weight: 1}]
"""


def test_full_file(tmp_path, ep, pool_of, req) -> None:
    p = tmp_path / "admission.yaml"
    p.write_text(FULL)
    cfg = load_admission_config(p)
    assert cfg.saturation_detector.metrics_staleness_threshold == 0.5
    assert cfg.flow_control.ttl == 60 and cfg.flow_control.max_bytes == 2 * 1024 * 1024
    assert cfg.objectives[1].ttl == 5
    ctl = cfg.controller()
    r = req()
    assert ctl.classify(r).name == "critical" and r.priority == 10
    assert ctl.detector.stale_in_flight_limit == 8
    assert isinstance(ctl.admit(r, pool_of(ep(waiting=2, scraped_at=0.0)), 0.1), Admitted)
    rr = req(model="chat")
    assert cfg.routing_rules().route(rr).target_model == "a"


def test_defaults() -> None:
    cfg = parse_admission_config(None)
    assert cfg == AdmissionConfig()
    assert cfg.flow_control.enabled and cfg.flow_control.ttl == 30
    assert cfg.saturation_detector.queue_depth_threshold == 5


@pytest.mark.parametrize("data,needle", [
    ({"flowControl": {"ordering": "lifo"}}, "flowControl.ordering"),
    ({"flowControl": {"ttl": "soon"}}, "not a duration"),
    ({"flowControl": {"maxBytes": "lots"}}, "not a size"),
    ({"objectives": [{"name": "a"}, {"name": "a"}]}, "defined twice"),
    ({"defaultObjective": "x"}, "not among the objectives"),
    ({"objectives": [{"name": "a", "priority": "high"}]}, "objectives.0.priority"),
    ({"modelRoutes": [{"model": "m", "targets": []}]}, "modelRoutes.0.targets"),
    ({"surprise": 1}, "surprise"),
    ([1, 2], "expected a mapping"),
])
def test_errors_name_the_field(data, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_admission_config(data, "adm.yaml")
    assert needle in str(exc.value) and "adm.yaml" in str(exc.value)


def test_missing_and_broken_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_admission_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_admission_config(bad)


def test_parse_size() -> None:
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("10MB") == 10_000_000
    assert parse_size("512k") == 512 * 1024
    assert parse_size("1000") == 1000
