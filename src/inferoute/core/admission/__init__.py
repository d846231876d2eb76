"""Admission control: saturation, objectives and shedding, flow control, rate limits, model
routing rules and usage accounting. Sans-I/O; see docs/admission.md for how a shell drives it.

`AdmissionConfig` is the `admission:` YAML section:

    saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8,
                         metricsStalenessThreshold: 200ms}
    objectives:
    - {name: critical, priority: 10}
    - {name: batch, priority: -1, ttl: 5s}
    defaultObjective: null
    flowControl: {enabled: true, ordering: edf, ttl: 30s, maxRequests: 1000,
                  maxBytes: 64MiB, retryAfter: 1s}
    modelRoutes:
    - model: chat
      targets: [{model: llama-3-8b, weight: 9}, {model: llama-canary, weight: 1}]
"""

from __future__ import annotations

from typing import Any

import pydantic

from ..errors import ConfigError, explain_validation
from ..scheduling.config import SaturationSpec
from .controller import FAIRNESS_HEADER, AdmissionController, Admitted
from .flowcontrol import FlowControlSpec, FlowQueue, QueueFull, Ticket, TicketState
from .objectives import OBJECTIVE_HEADER, Objective, Objectives, ObjectiveSpec
from .ratelimit import Limits, MemoryRateLimiter, RateLimiter, Reservation, estimate_tokens
from .release import ReleaseRule
from .routing_rules import RouteChoice, RouteSpec, RoutingRules, rewrite_model
from .saturation import SaturationDetector
from ..sse import usage_of
from .usage import (ResponseRewriter, UpstreamBody, prepare_upstream_body, rewrite_response_model,
                    total_tokens)


class AdmissionConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    saturation_detector: SaturationSpec = pydantic.Field(default_factory=SaturationSpec,
                                                         alias="saturationDetector")
    stale_in_flight_limit: int | None = pydantic.Field(None, alias="staleInFlightLimit", ge=1)
    objectives: list[ObjectiveSpec] = pydantic.Field(default_factory=list)
    default_objective: str | None = pydantic.Field(None, alias="defaultObjective")
    flow_control: FlowControlSpec = pydantic.Field(default_factory=FlowControlSpec,
                                                   alias="flowControl")
    model_routes: list[RouteSpec] = pydantic.Field(default_factory=list, alias="modelRoutes")

    @pydantic.model_validator(mode="after")
    def _refs(self) -> "AdmissionConfig":
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("an objective name is defined twice")
        if self.default_objective is not None and self.default_objective not in names:
            raise ValueError(f"defaultObjective {self.default_objective!r} is not among the "
                             f"objectives ({', '.join(names) or 'none'})")
        routes = [r.model for r in self.model_routes]
        if len(set(routes)) != len(routes):
            raise ValueError("a modelRoutes model is defined twice")
        return self

    def controller(self, **kw: Any) -> AdmissionController:
        """The AdmissionController this config describes (`kw`: e.g. `candidates_of`)."""
        det = SaturationDetector(self.saturation_detector,
                                 stale_in_flight_limit=self.stale_in_flight_limit)
        return AdmissionController(det, Objectives(self.objectives, self.default_objective),
                                   self.flow_control, **kw)

    def routing_rules(self) -> RoutingRules:
        return RoutingRules(self.model_routes)


def parse_admission_config(data: Any, source: str = "<admission>") -> AdmissionConfig:
    """Validate a parsed mapping; ConfigError lists every problem with its location."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid admission config in {source}: expected a mapping")
    try:
        return AdmissionConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain_validation(exc, "admission config", source)) from None


__all__ = [
    "AdmissionConfig", "AdmissionController", "Admitted", "FAIRNESS_HEADER", "FlowControlSpec",
    "FlowQueue", "Limits", "MemoryRateLimiter", "OBJECTIVE_HEADER", "Objective", "ObjectiveSpec",
    "Objectives", "QueueFull", "RateLimiter", "ReleaseRule", "Reservation", "ResponseRewriter", "RouteChoice",
    "RouteSpec", "RoutingRules", "SaturationDetector", "Ticket", "TicketState", "UpstreamBody",
    "estimate_tokens", "parse_admission_config",
    "prepare_upstream_body", "rewrite_model", "rewrite_response_model",
    "total_tokens", "usage_of",
]
