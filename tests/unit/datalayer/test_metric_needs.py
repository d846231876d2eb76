"""What each packaged policy reads from the scrapes (`metric_needs`, from the plugins'
`metric_reads`), and the parser reading only those families."""

from __future__ import annotations

import pytest

from inferoute.configfiles import packaged_policies, resolve_config
from inferoute.core.metricsparse import parse_metrics
from inferoute.core.plugins.common import BasePlugin
from inferoute.core.scheduling.metric_reads import MetricReads
from inferoute.core.scheduling.registry import create_plugin, get_plugin_class, plugin_types
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


#: (fresh, parsed) per packaged policy (None: the default config), as the type-keyed table
#: `PLUGIN_NEEDS` gave them before the declarations moved onto the plugin classes (computed
#: once from that table at commit 4142652): the move changed no policy's scrapes. A change to a
#: policy or a plugin's reads that alters a row is deliberate: update the row with the reason.
WAS: dict[str | None, tuple[set[str], set[str]]] = {
    # the default became inferoute's policy (2026-12-07; the llm-d guide's weights before)
    None: (set(), {"cache_config", "kv_usage", "prefix_cache", "running", "waiting"}),
    "dynamo-kv": (set(), {"cache_config", "kv_usage", "running", "waiting"}),
    "inferoute-slo": ({"kv_usage", "waiting"}, {"cache_config", "kv_usage", "running", "waiting"}),
    # kv-fit-filter joined inferoute's policy and reads the hit counters (2026-12-07)
    "inferoute": (set(), {"cache_config", "kv_usage", "prefix_cache", "running", "waiting"}),
    "least-request": (set(), {"kv_usage", "running", "waiting"}),
    "llm-d-optimized": (set(), {"cache_config", "kv_usage", "running", "waiting"}),
    "llm-d": ({"kv_usage", "waiting"}, {"cache_config", "kv_usage", "running", "waiting"}),
    "precise": ({"kv_usage", "waiting"}, {"cache_config", "kv_usage", "running", "waiting"}),
    "random": (set(), {"kv_usage", "running", "waiting"}),
    "round-robin": (set(), {"kv_usage", "running", "waiting"}),
    "sglang-cache-aware": (set(), {"kv_usage", "running", "waiting"}),
}


def test_every_packaged_policy_is_in_the_table():
    """A new packaged policy adds its row (what it should read) to `WAS`."""
    assert set(WAS) == {None, *packaged_policies()}


@pytest.mark.parametrize("policy", list(WAS), ids=str)
def test_each_packaged_policy_reads_what_it_read_before(policy):
    needs = _needs(policy)
    assert (needs.fresh, needs.parsed) == WAS[policy]


def test_the_inferoute_policy_reads_only_the_kv_capacity_and_hit_counters():
    needs = _needs("inferoute")
    assert not needs.needs_fresh_load
    assert needs.parsed == ALWAYS_PARSED | {"cache_config", "prefix_cache"}


#: the plugin types the package ships (other tests register plugins of their own)
PACKAGED_TYPES = [t for t in plugin_types()
                  if getattr(get_plugin_class(t), "__module__", "").startswith("inferoute.")]


def test_the_package_ships_plugins():
    assert "queue-scorer" in PACKAGED_TYPES and len(PACKAGED_TYPES) >= 27


@pytest.mark.parametrize("type_name", PACKAGED_TYPES)
def test_every_packaged_plugin_declares_what_it_reads(type_name):
    """Declared in the class's own body: a subclass reads what its own code reads, so it does
    not silently inherit its base's declaration."""
    cls = get_plugin_class(type_name)
    assert isinstance(vars(cls).get("metric_reads"), MetricReads), (
        f"{cls.__name__} ({type_name}) declares no `metric_reads`")
    params = getattr(cls, "Params", None)
    for group, name in cls.metric_reads.only_when:
        assert params is not None and name in params.model_fields, (
            f"{type_name}: `only_when` reads {group!r} by parameter {name!r}, which it lacks")


class _ThirdParty(BasePlugin):
    type_name = "third-party-scorer"


class _Duck:
    """A plugin-shaped object that does not derive from `BasePlugin`."""

    type_name = "duck-scorer"
    params = None


@pytest.mark.parametrize("plugin", [_ThirdParty(), _Duck()], ids=["BasePlugin", "duck"])
def test_a_plugin_that_declares_nothing_reads_everything_fresh(plugin):
    needs = needs_of_plugins([plugin])
    assert needs.fresh == needs.parsed == {"waiting", "running", "kv_usage", "cache_config",
                                           "lora", "prefix_cache"}


@pytest.mark.parametrize("type_name", ["prefix-cache-scorer", "approx-prefix-cache-producer"])
@pytest.mark.parametrize("auto_tune", [True, False])
def test_the_prefix_index_reads_the_cache_config_only_to_auto_tune(type_name, auto_tune):
    """(The type-keyed table had `approx-prefix-cache-producer` read nothing, so its autoTune,
    inherited from the prefix scorer, never saw a cache config; the declaration fixes that.)"""
    plugin = create_plugin(type_name, type_name, {"autoTune": auto_tune})
    assert needs_of_plugins([plugin]) == MetricNeeds(
        parsed=ALWAYS_PARSED | ({"cache_config"} if auto_tune else set()))


def test_only_when_must_name_a_group_the_plugin_reads():
    with pytest.raises(ValueError, match="lora"):
        MetricReads(fresh=("waiting",), only_when={"lora": "lora_weight"})


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
