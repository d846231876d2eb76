"""The scheduling framework: weighted sums, filters, ties, fallbacks and hooks."""

from __future__ import annotations

from collections import Counter

import pytest

from inferoute.core.errors import NoEndpointAvailable
from inferoute.core.scheduling.config import load_config_text
from inferoute.core.scheduling.scheduler import Scheduler


def sched(text: str, seed: int = 1) -> Scheduler:
    return Scheduler(load_config_text(text), seed=seed)


QUEUE_VS_KV = """
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: max-score-picker}]
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: %s}
  - {pluginRef: kv-cache-utilization-scorer, weight: %s}
  - {pluginRef: max-score-picker}
"""


def test_weights_decide_between_scorers(make_ep, make_req) -> None:
    short_queue_full_cache = make_ep(0, waiting=0, kv_usage=0.9)
    long_queue_empty_cache = make_ep(1, waiting=10, kv_usage=0.1)
    eps = [short_queue_full_cache, long_queue_empty_cache]
    assert sched(QUEUE_VS_KV % (3, 1)).schedule(make_req(), eps, 0.0).target is eps[0]
    assert sched(QUEUE_VS_KV % (1, 3)).schedule(make_req(), eps, 0.0).target is eps[1]


def test_totals_are_weighted_sums(make_ep, make_req) -> None:
    eps = [make_ep(0, waiting=0, kv_usage=0.5), make_ep(1, waiting=4, kv_usage=0.0)]
    res = sched(QUEUE_VS_KV % (2, 3)).schedule(make_req(), eps, 0.0, debug=True)
    prof = res.profiles["default"]
    assert prof.scores == pytest.approx({eps[0].name: 2 * 1 + 3 * 0.5, eps[1].name: 3.0})
    assert prof.breakdown["queue-scorer"] == {eps[0].name: 1.0, eps[1].name: 0.0}


def test_zero_weight_scorer_has_no_effect(make_ep, make_req) -> None:
    eps = [make_ep(0, waiting=9, kv_usage=0.2), make_ep(1, waiting=0, kv_usage=0.3)]
    assert sched(QUEUE_VS_KV % (0, 1)).schedule(make_req(), eps, 0.0).target is eps[0]


def test_filter_emptying_the_set_is_no_endpoint(make_ep, make_req) -> None:
    s = sched("""
plugins: [{type: decode-filter}, {type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: decode-filter},
                                               {pluginRef: queue-scorer}]}]
""")
    with pytest.raises(NoEndpointAvailable) as exc:
        s.schedule(make_req(model="m"), [make_ep(0, role="prefill")], 0.0)
    assert exc.value.status == 503 and "passed the filters" in exc.value.message
    with pytest.raises(NoEndpointAvailable, match="no ready endpoint"):
        s.schedule(make_req(), [], 0.0)


def test_filters_run_in_order_and_restrict_the_choice(make_ep, make_req) -> None:
    s = sched("""
plugins:
- {type: label-selector-filter, parameters: {matchLabels: {zone: a}}}
- {type: queue-scorer}
schedulingProfiles: [{name: default, plugins: [{pluginRef: label-selector-filter},
                                               {pluginRef: queue-scorer}]}]
""")
    eps = [make_ep(0, waiting=0, labels={"zone": "b"}), make_ep(1, waiting=5, labels={"zone": "a"})]
    res = s.schedule(make_req(), eps, 0.0)
    assert res.targets == [eps[1]]


def test_ties_are_random_but_deterministic_per_seed(make_ep, make_req) -> None:
    eps = [make_ep(i) for i in range(4)]  # identical metrics: every total ties
    text = QUEUE_VS_KV % (1, 1)
    firsts = [sched(text, seed=3).schedule(make_req(), eps, 0.0).target for _ in range(5)]
    assert len(set(firsts)) == 1  # same seed, same first choice
    s = sched(text, seed=3)
    counts = Counter(s.schedule(make_req(), eps, 0.0).target.name for _ in range(400))
    assert set(counts) == {ep.name for ep in eps}
    assert min(counts.values()) > 60  # roughly uniform over 4


def test_fallbacks_follow_score_order(make_ep, make_req) -> None:
    eps = [make_ep(0, waiting=5), make_ep(1, waiting=0), make_ep(2, waiting=2)]
    s = sched("""
plugins: [{type: queue-scorer}, {type: max-score-picker, parameters: {maxNumOfEndpoints: 3}}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer},
                                               {pluginRef: max-score-picker}]}]
""")
    assert s.schedule(make_req(), eps, 0.0).targets == [eps[1], eps[2], eps[0]]
    # default picker settings: the target plus one fallback
    s2 = sched("""
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
""")
    assert s2.schedule(make_req(), eps, 0.0).targets == [eps[1], eps[2]]


def test_endpoint_removed_reaches_stateful_plugins(make_ep, make_req) -> None:
    s = Scheduler(seed=1)  # the default (llm-d) config
    eps = [make_ep(i) for i in range(2)]
    req = make_req("z" * 2000)
    target = s.schedule(req, eps, 0.0).target
    prefix = s.plugins["prefix-cache-scorer"]
    assert prefix.index.size(target.name) > 0
    s.on_endpoint_removed(target)
    assert prefix.index.size(target.name) == 0 and target.name not in prefix.index.endpoints()
