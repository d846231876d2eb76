"""InferenceObjective-style objectives: a name a request opts into, and the priority it gets.

A request names its objective with the header `x-gateway-inference-objective`; without it (or with
a name nobody configured) it gets the tenant's objective, else the default (priority 0). A
negative priority is *sheddable*: rejected with 429 while the pool is saturated. Priority 0 and
above is never shed; it waits in the flow-control queue instead.

A tenant's own objective caps what its clients may ask for through the header, so a key cannot
promote its traffic above what it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pydantic

__all__ = ["DEFAULT_OBJECTIVE", "Objective", "OBJECTIVE_HEADER", "Objectives", "ObjectiveSpec"]

OBJECTIVE_HEADER = "x-gateway-inference-objective"


class ObjectiveSpec(pydantic.BaseModel):
    """One objective: `priority` (higher is served first; negative is sheddable) and an optional
    queue `ttl` override in seconds."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(min_length=1)
    priority: int = 0
    ttl: float | None = pydantic.Field(None, gt=0)

    @pydantic.field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        from ..scheduling.config import parse_duration
        return parse_duration(v) if isinstance(v, str) else v


@dataclass(slots=True, frozen=True)
class Objective:
    name: str
    priority: int = 0
    ttl: float | None = None

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


DEFAULT_OBJECTIVE = Objective("default", 0)


class Objectives:
    """Name -> objective lookup and per-request resolution."""

    def __init__(self, specs: list[ObjectiveSpec] | list[Objective] = (),  # type: ignore[assignment]
                 default: str | None = None) -> None:
        self._by_name: dict[str, Objective] = {}
        for s in specs:
            obj = Objective(s.name, s.priority, s.ttl)
            if obj.name in self._by_name:
                raise ValueError(f"objective {obj.name!r} is defined twice")
            self._by_name[obj.name] = obj
        if default is not None and default not in self._by_name:
            raise ValueError(f"default objective {default!r} is not defined")
        self.default = self._by_name[default] if default else DEFAULT_OBJECTIVE

    def get(self, name: str) -> Objective | None:
        return self._by_name.get(name)

    @property
    def top_priority(self) -> int:
        """The highest priority a request can have (defined objectives and the default)."""
        return max([self.default.priority, *(o.priority for o in self._by_name.values())])

    def names(self) -> list[str]:
        return list(self._by_name)

    def resolve(self, headers: Mapping[str, str], tenant_objective: str | None = None) -> Objective:
        """The objective for a request: header, else tenant's, else default; the tenant's
        objective caps the header's priority."""
        cap = self._by_name.get(tenant_objective) if tenant_objective else None
        base = cap or self.default
        asked = headers.get(OBJECTIVE_HEADER)
        if asked:
            obj = self._by_name.get(asked.strip())
            if obj is not None:
                if cap is not None and obj.priority > cap.priority:
                    return cap
                return obj
        return base
