"""What each packaged policy reads from the scrapes (`metric_needs`), and the parser reading
only those families."""

from __future__ import annotations

import pytest

from inferoute.configfiles import resolve_config
from inferoute.core.metricsparse import parse_metrics
from inferoute.core.scheduling.scheduler import Scheduler
from inferoute.datalayer.metric_needs import (
    ADMISSION_NEEDS,
    ALWAYS_PARSED,
    MetricNeeds,
    needs_of_plugins,
)
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.serving_config import parse_serving_config

from .test_metricsparse import VLLM_V1


def _needs(policy: str | None) -> MetricNeeds:
    return needs_of_plugins(Scheduler(resolve_config(policy)).plugins.values())


def test_the_inferoute_policy_reads_only_the_kv_capacity():
    needs = _needs("inferoute")
    assert not needs.needs_fresh_load
    assert needs.parsed == ALWAYS_PARSED | {"cache_config"}


@pytest.mark.parametrize("policy", [None, "llm-d"])
def test_load_scorers_need_fresh_load(policy):
    """The default (prefix, KV usage and queue scorers) reads the queue and KV usage fresh."""
    needs = _needs(policy)
    assert needs.needs_fresh_load and {"waiting", "kv_usage"} <= needs.fresh
    assert "lora" not in needs.parsed and "prefix_cache" not in needs.parsed


@pytest.mark.parametrize("policy", ["round-robin", "random", "least-request", "sglang-cache-aware"])
def test_policies_that_read_no_metrics(policy):
    assert _needs(policy) == MetricNeeds()


def test_an_undeclared_plugin_type_reads_everything_fresh():
    class Mystery:
        type_name = "not-declared-anywhere"
        params = None
    needs = needs_of_plugins([Mystery()])
    assert needs.needs_fresh_load and {"lora", "prefix_cache"} <= needs.parsed


def test_weighted_scrape_terms_of_the_default_scorer_need_them_fresh():
    cfg = {"plugins": [{"type": "predictive-cost-scorer", "parameters": {"waitingWeight": 1.0}},
                       {"type": "max-score-picker"}],
           "schedulingProfiles": [{"name": "default", "plugins": [
               {"pluginRef": "predictive-cost-scorer"}, {"pluginRef": "max-score-picker"}]}]}
    data = DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://127.0.0.1:9"], "scheduler": cfg}]}))
    assert data.metric_needs["m"].fresh == {"waiting"}


def test_admission_adds_the_saturation_detectors_needs():
    data = DataLayer(parse_serving_config({"admission": {}, "pools": [
        {"model": "m", "endpoints": ["http://127.0.0.1:9"]}]}))
    assert ADMISSION_NEEDS.fresh <= data.metric_needs["m"].fresh
    assert data.metric_needs["m"].needs_fresh_load


def test_the_parser_skips_families_nobody_reads():
    full = parse_metrics(VLLM_V1, "vllm")
    some = parse_metrics(VLLM_V1, "vllm", fields=ALWAYS_PARSED)
    assert (some.waiting, some.running, some.kv_usage, some.model_names) == (
        full.waiting, full.running, full.kv_usage, full.model_names)
    assert full.num_blocks and full.max_lora and full.prefix_cache_queries
    assert (some.num_blocks, some.max_lora, some.prefix_cache_queries) == (None, None, None)
