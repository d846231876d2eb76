"""Deferred `on_scheduled` hooks (what the gateway uses to update the prefix index after the
upstream send): they wait for `run_deferred_hooks`, yet no decision, finish or removal ever
sees the state without them, and an `on_served` in between keeps its place behind them."""

from __future__ import annotations

from typing import Any

from inferoute.core.plugins.common import BasePlugin
from inferoute.core.scheduling.config import load_config_text
from inferoute.core.scheduling.framework import CycleContext, SchedulingResult
from inferoute.core.scheduling.registry import register
from inferoute.core.scheduling.scheduler import Scheduler


@register
class HookRecorder(BasePlugin):
    """A scorer (constant 1) that records the hooks it receives, in order."""

    type_name = "hook-recorder-for-tests"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[str, str]] = []

    def score(self, ctx: CycleContext, request: Any, endpoints: list[Any]) -> list[float]:
        return [1.0] * len(endpoints)

    def on_scheduled(self, ctx: CycleContext, request: Any, result: SchedulingResult) -> None:
        self.calls.append(("scheduled", request.request_id))

    def on_served(self, request: Any, endpoint: Any, now: float) -> None:
        self.calls.append(("served", request.request_id))

    def on_finished(self, request: Any, endpoint: Any, now: float, usage: Any) -> None:
        self.calls.append(("finished", request.request_id))

    def on_endpoint_removed(self, endpoint: Any) -> None:
        self.calls.append(("removed", endpoint.name))


CONFIG = """
plugins: [{type: hook-recorder-for-tests, name: rec}, {type: max-score-picker}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: rec}, {pluginRef: max-score-picker}]}]
"""


def _sched() -> tuple[Scheduler, HookRecorder]:
    s = Scheduler(load_config_text(CONFIG), seed=1)
    return s, s.plugins["rec"]


def test_deferred_hooks_wait_for_the_flush(make_ep, make_req) -> None:
    s, rec = _sched()
    ep = make_ep(0)
    s.schedule(make_req(request_id="a"), [ep], 0.0, defer_hooks=True)
    s.on_served(make_req(request_id="a"), ep, 0.0)
    assert rec.calls == []
    s.run_deferred_hooks()
    assert rec.calls == [("scheduled", "a"), ("served", "a")]
    s.run_deferred_hooks()  # nothing twice
    assert len(rec.calls) == 2


def test_the_next_decision_finish_or_removal_flushes_first(make_ep, make_req) -> None:
    s, rec = _sched()
    ep = make_ep(0)
    s.schedule(make_req(request_id="a"), [ep], 0.0, defer_hooks=True)
    s.schedule(make_req(request_id="b"), [ep], 0.0)  # inline hooks, after a's
    assert rec.calls == [("scheduled", "a"), ("scheduled", "b")]
    s.schedule(make_req(request_id="c"), [ep], 0.0, defer_hooks=True)
    s.on_finished(make_req(request_id="b"), ep, 1.0)
    assert rec.calls[-2:] == [("scheduled", "c"), ("finished", "b")]
    s.schedule(make_req(request_id="d"), [ep], 0.0, defer_hooks=True)
    s.on_endpoint_removed(ep)
    assert rec.calls[-2:] == [("scheduled", "d"), ("removed", ep.name)]


def test_a_deferred_prefix_insert_is_seen_by_the_next_decision(make_ep, make_req) -> None:
    s = Scheduler(load_config_text("""
plugins: [{type: prefix-cache-scorer}, {type: max-score-picker}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix-cache-scorer},
                                               {pluginRef: max-score-picker}]}]
"""), seed=3)
    eps = [make_ep(i) for i in range(4)]
    prompt = "the same long system prompt " * 40
    first = s.schedule(make_req(prompt), eps, 0.0, defer_hooks=True).target
    # not flushed explicitly: the next decision applies the first one's insert before scoring
    for _ in range(5):
        assert s.schedule(make_req(prompt), eps, 0.0, defer_hooks=True).target is first
