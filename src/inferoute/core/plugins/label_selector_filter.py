"""`label-selector-filter`: keeps endpoints whose labels match a Kubernetes-style selector.

`matchLabels: {key: value}` (all must be equal) and `matchExpressions: [{key, operator, values}]`
with operator `In` / `NotIn` (non-empty `values`) or `Exists` / `DoesNotExist` (no `values`).
An empty selector keeps every endpoint.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams

__all__ = ["LabelExpression", "LabelSelectorFilter"]


class LabelExpression(PluginParams):
    key: str = pydantic.Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> "LabelExpression":
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty 'values' list "
                             f"(key {self.key!r})")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no 'values' (key {self.key!r})")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        op = self.operator
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        if op == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: a missing key passes, as in k8s


@register
class LabelSelectorFilter(BasePlugin):
    """Keeps endpoints whose labels satisfy `matchLabels` and every `matchExpressions` entry."""

    type_name = "label-selector-filter"
    metric_reads = MetricReads()

    class Params(PluginParams):
        match_labels: dict[str, str] = pydantic.Field(default_factory=dict)
        match_expressions: list[LabelExpression] = pydantic.Field(default_factory=list)

    def matches(self, ep: Endpoint) -> bool:
        labels = ep.labels
        for k, v in self.params.match_labels.items():
            if labels.get(k) != v:
                return False
        return all(expr.matches(labels) for expr in self.params.match_expressions)

    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]:
        return [ep for ep in endpoints if self.matches(ep)]
