"""Failure injection for the simulator: which requests fail, and how.

A replica draws a fault for each request with probability `rate` from `kinds`, unless the
request forces one with the `x-inferoute-sim-fault` header (any kind, or `none`). Kinds:

- `429`, `500`, `503`: an immediate error response in vLLM's error format (429 carries
  `Retry-After`);
- `drop`: the connection is closed without a complete response (mid-stream for a streamed
  request, after `drop_after_tokens` tokens);
- `slow`: the request reaches the engine `slow_delay` seconds late (extra time to first token).

Settings change at run time through `POST /admin/faults` (see server.py).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Mapping

from ..core.errors import BadRequest

FAULT_HEADER = "x-inferoute-sim-fault"
KINDS = ("429", "500", "503", "drop", "slow")


@dataclass(slots=True)
class FaultSettings:
    """Current failure-injection settings of one replica."""

    rate: float = 0.0
    kinds: list[str] = field(default_factory=lambda: ["500"])
    slow_delay: float = 1.0
    drop_after_tokens: int = 2
    retry_after: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(value: Any, where: str) -> str:
    kind = str(value).strip().lower()
    if kind not in KINDS:
        raise BadRequest(f"{where}: unknown fault kind {value!r}; expected one of "
                         f"{', '.join(KINDS)}", param=where)
    return kind


class FaultInjector:
    """Draws faults for requests from the settings, with its own seeded generator."""

    def __init__(self, settings: FaultSettings | None = None, *, seed: int = 0) -> None:
        self.settings = settings or FaultSettings()
        self._rng = random.Random(seed)

    def update(self, patch: Mapping[str, Any]) -> FaultSettings:
        """Apply a partial JSON update; BadRequest on a bad field, leaving settings unchanged."""
        if not isinstance(patch, Mapping):
            raise BadRequest("fault settings must be a JSON object")
        s = self.settings
        new = FaultSettings(rate=s.rate, kinds=list(s.kinds), slow_delay=s.slow_delay,
                            drop_after_tokens=s.drop_after_tokens, retry_after=s.retry_after)
        unknown = set(patch) - {"rate", "kinds", "slow_delay", "drop_after_tokens",
                                "retry_after"}
        if unknown:
            raise BadRequest(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        if "rate" in patch:
            rate = patch["rate"]
            if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
                raise BadRequest("'rate' must be a number in [0, 1]", param="rate")
            new.rate = float(rate)
        if "kinds" in patch:
            kinds = patch["kinds"]
            if isinstance(kinds, str):
                kinds = [k for k in kinds.split(",") if k.strip()]
            if not isinstance(kinds, list) or not kinds:
                raise BadRequest("'kinds' must be a non-empty list", param="kinds")
            new.kinds = [_kind(k, "kinds") for k in kinds]
        for name in ("slow_delay",):
            if name in patch:
                v = patch[name]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise BadRequest(f"'{name}' must be a non-negative number", param=name)
                setattr(new, name, float(v))
        for name in ("drop_after_tokens", "retry_after"):
            if name in patch:
                v = patch[name]
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise BadRequest(f"'{name}' must be a non-negative integer", param=name)
                setattr(new, name, v)
        self.settings = new
        return new

    def draw(self, headers: Mapping[str, str]) -> str | None:
        """The fault for one request: forced by header, else drawn at `rate`; None = serve."""
        forced = headers.get(FAULT_HEADER)
        if forced is not None:
            if forced.strip().lower() in ("", "none"):
                return None
            return _kind(forced, FAULT_HEADER)
        s = self.settings
        if s.rate > 0 and self._rng.random() < s.rate:
            return self._rng.choice(s.kinds)
        return None
