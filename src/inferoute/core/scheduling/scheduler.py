"""The scheduler: runs profiles of filters, weighted scorers and a picker for each request.

Built from an EndpointPickerConfig; synchronous and deterministic for a given RNG seed. The
caller passes the candidate endpoints and the time, and reports the request's progress back
through `on_served` / `on_first_token` / `on_finished` so stateful plugins (prefix index,
session affinity, in-flight token counts) learn. A plugin that reads another one (the prefix-cache
affinity filter reads a prefix scorer) gets the configured plugins through its `bind` method.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Sequence

from ..endpoint import Endpoint
from ..errors import ConfigError, NoEndpointAvailable
from ..request import InferenceRequest
from .config import EndpointPickerConfig, default_config
from .framework import (CycleContext, DataKey, Filter, Picker, ProfileHandler, ProfileResult,
                        SchedulingResult, ScoredEndpoint, Scorer)
from .metric_reads import MetricReads
from .registry import create_plugin

__all__ = ["check_data_flow", "DEFAULT_PICKER", "Scheduler", "SingleProfileHandler"]

DEFAULT_PICKER = "max-score-picker"


@dataclass(slots=True)
class _Profile:
    name: str
    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker


class SingleProfileHandler:
    """Runs the one configured profile; used when the config names no profile handler."""

    type_name: ClassVar[str] = "single-profile-handler"
    metric_reads: ClassVar[MetricReads] = MetricReads()

    def __init__(self, name: str = "single-profile-handler") -> None:
        self.name = name

    def pick_profiles(self, ctx: CycleContext, request: InferenceRequest,
                      profiles: Sequence[str], results: dict[str, ProfileResult]) -> list[str]:
        return [] if results else [profiles[0]]

    def process_results(self, ctx: CycleContext, request: InferenceRequest,
                        results: dict[str, ProfileResult]) -> SchedulingResult:
        (name,) = results
        return SchedulingResult(primary=name, profiles=results)


def check_data_flow(plugins: dict[str, Any]) -> None:
    """Raise ConfigError unless every key a plugin consumes is produced by a configured plugin
    (and every producer of a name agrees on its type)."""
    produced: dict[str, DataKey[Any]] = {}
    for plugin in plugins.values():
        for key in getattr(plugin, "produces", ()):
            known = produced.setdefault(key.name, key)
            if known != key:
                raise ConfigError(f"plugin {plugin.name!r} produces {key}, another plugin {known}")
    for plugin in plugins.values():
        for key in getattr(plugin, "consumes", ()):
            if produced.get(key.name) != key:
                raise ConfigError(
                    f"plugin {plugin.name!r} ({plugin.type_name}) consumes {key}, which no "
                    "configured plugin produces" + (f" (one produces {produced[key.name]})"
                                                    if key.name in produced else ""))


class Scheduler:
    """Filters, scores and picks endpoints for requests, as configured."""

    def __init__(self, config: EndpointPickerConfig | None = None, *,
                 seed: int | None = None) -> None:
        self.config = config or default_config()
        self.rng = random.Random(seed)
        #: keep every scorer's per-endpoint scores in each result (as `debug=True` does), for
        #: a caller that shows them (the gateway's /dashboard)
        self.record_scores = False
        self.plugins: dict[str, Any] = {
            spec.ref: create_plugin(spec.type, spec.ref, spec.parameters)
            for spec in self.config.plugins}
        for plugin in self.plugins.values():
            bind = getattr(plugin, "bind", None)
            if callable(bind):
                bind(self.plugins)
        check_data_flow(self.plugins)
        handlers = [p for p in self.plugins.values() if isinstance(p, ProfileHandler)]
        if len(handlers) > 1:
            raise ConfigError("at most one profile handler may be configured, got "
                              + ", ".join(h.name for h in handlers))
        self.profiles: dict[str, _Profile] = {
            spec.name: self._build_profile(spec) for spec in self.config.scheduling_profiles}
        if handlers:
            self.handler: ProfileHandler = handlers[0]
        else:
            if len(self.profiles) != 1:
                raise ConfigError(f"{len(self.profiles)} scheduling profiles need a profile "
                                  "handler plugin (e.g. pd-profile-handler)")
            self.handler = SingleProfileHandler()
        check = getattr(self.handler, "check_profiles", None)
        if callable(check):
            check(list(self.profiles))
        self._hooked = {
            hook: [p for p in self.plugins.values() if callable(getattr(p, hook, None))]
            for hook in ("on_scheduled", "on_served", "on_first_token", "on_finished",
                         "on_endpoint_removed")}
        #: hook calls waiting for `run_deferred_hooks`, in order
        self._deferred: list[Callable[[], None]] = []

    def _build_profile(self, spec: Any) -> _Profile:
        filters: list[Filter] = []
        scorers: list[tuple[Scorer, float]] = []
        picker: Picker | None = None
        for ref in spec.plugins:
            plugin = self.plugins[ref.plugin_ref]
            roles = 0
            if isinstance(plugin, Filter):
                filters.append(plugin)
                roles += 1
            if isinstance(plugin, Scorer):
                scorers.append((plugin, 1.0 if ref.weight is None else ref.weight))
                roles += 1
            if isinstance(plugin, Picker):
                if picker is not None:
                    raise ConfigError(f"profile {spec.name!r} has two pickers: "
                                      f"{picker.name!r} and {plugin.name!r}")
                picker = plugin
                roles += 1
            if roles == 0:
                raise ConfigError(f"profile {spec.name!r}: plugin {ref.plugin_ref!r} is not a "
                                  "filter, scorer or picker")
            if ref.weight is not None and not isinstance(plugin, Scorer):
                raise ConfigError(f"profile {spec.name!r}: weight given for "
                                  f"{ref.plugin_ref!r}, which is not a scorer")
        if picker is None:
            picker = create_plugin(DEFAULT_PICKER, f"{spec.name}-{DEFAULT_PICKER}", None)
        return _Profile(spec.name, filters, scorers, picker)

    def _run_profile(self, ctx: CycleContext, request: InferenceRequest, prof: _Profile,
                     endpoints: list[Endpoint]) -> ProfileResult:
        cands = endpoints
        for flt in prof.filters:
            cands = flt.filter(ctx, request, cands)
            if not cands:
                return ProfileResult(prof.name, [])
        totals = [0.0] * len(cands)
        breakdown: dict[str, dict[str, float]] = {}
        for scorer, weight in prof.scorers:
            scores = scorer.score(ctx, request, cands)
            if len(scores) != len(cands):
                raise RuntimeError(f"scorer {scorer.name!r} returned {len(scores)} scores "
                                   f"for {len(cands)} endpoints")
            totals = [t + weight * (0.0 if s < 0.0 else 1.0 if s > 1.0 else s)
                      for t, s in zip(totals, scores)]
            if ctx.debug:
                breakdown[scorer.name] = {ep.name: s for ep, s in zip(cands, scores)}
        scored = [ScoredEndpoint(ep, t) for ep, t in zip(cands, totals)]
        targets = prof.picker.pick(ctx, request, scored)
        return ProfileResult(prof.name, targets,
                             {ep.name: t for ep, t in zip(cands, totals)}, breakdown)

    def schedule(self, request: InferenceRequest, endpoints: list[Endpoint], now: float, *,
                 debug: bool = False, defer_hooks: bool = False) -> SchedulingResult:
        """Choose endpoints for `request` among `endpoints` (already ready/healthy).

        Raises NoEndpointAvailable when none is given or every profile's filters empty the set.
        Calls the plugins' `on_scheduled` hooks on success: the caller is expected to send the
        request to `result.target` (or a fallback, then report it with `on_served`).

        `defer_hooks` queues those hooks (the prefix index update, mostly) instead: they run at
        `run_deferred_hooks()`, or before this scheduler's next decision or next finished or
        removed hook, whichever comes first (an `on_served` meanwhile queues behind them), so
        no decision ever sees the state without them. The gateway sends the request first and
        runs them while the model server works, which takes them off the request's latency.
        """
        if self._deferred:
            self.run_deferred_hooks()
        if not endpoints:
            raise NoEndpointAvailable(f"no ready endpoint for model {request.target_model!r}")
        debug = debug or self.record_scores
        ctx = CycleContext(now=now, rng=self.rng, debug=debug)
        results: dict[str, ProfileResult] = {}
        names = list(self.profiles)
        for _ in range(len(names) + 1):
            todo = self.handler.pick_profiles(ctx, request, names, results)
            if not todo:
                break
            for name in todo:
                if name not in self.profiles:
                    raise ConfigError(f"profile handler asked for unknown profile {name!r}")
                results[name] = self._run_profile(ctx, request, self.profiles[name], endpoints)
        result = self.handler.process_results(ctx, request, results)
        if not result.profiles.get(result.primary) or not result.targets:
            raise NoEndpointAvailable(
                f"no endpoint of model {request.target_model!r} passed the filters")
        if defer_hooks:
            self._deferred.append(partial(self._scheduled_hooks, ctx, request, result))
        else:
            self._scheduled_hooks(ctx, request, result)
        return result

    def _scheduled_hooks(self, ctx: CycleContext, request: InferenceRequest,
                         result: SchedulingResult) -> None:
        for plugin in self._hooked["on_scheduled"]:
            plugin.on_scheduled(ctx, request, result)

    def run_deferred_hooks(self) -> None:
        """Run the `on_scheduled` hooks of decisions made with `defer_hooks`, in order."""
        while self._deferred:
            pending, self._deferred = self._deferred, []
            for call in pending:
                call()

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        if self._deferred:  # keep the order: after the deferred on_scheduled hooks
            self._deferred.append(partial(self._served_hooks, request, endpoint, now))
        else:
            self._served_hooks(request, endpoint, now)

    def _served_hooks(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        for plugin in self._hooked["on_served"]:
            plugin.on_served(request, endpoint, now)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        """The first token of `request` came back from `endpoint` (its prefill is done)."""
        hooked = self._hooked["on_first_token"]
        if not hooked:  # most policies: leave the deferred hooks' timing alone
            return
        if self._deferred:
            self.run_deferred_hooks()
        for plugin in hooked:
            plugin.on_first_token(request, endpoint, now)

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None = None) -> None:
        if self._deferred:
            self.run_deferred_hooks()
        for plugin in self._hooked["on_finished"]:
            plugin.on_finished(request, endpoint, now, usage)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        if self._deferred:
            self.run_deferred_hooks()
        for plugin in self._hooked["on_endpoint_removed"]:
            plugin.on_endpoint_removed(endpoint)
