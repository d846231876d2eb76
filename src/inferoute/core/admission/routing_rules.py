"""Model routing rules: a client-facing model name split across target models or LoRA adapters.

    modelRoutes:
    - model: chat                 # what clients send
      split: hash                 # hash (default: by request id, or by `hashHeader`) | random
      hashHeader: x-user-id       # optional: the same user always lands on the same target
      targets:
      - {model: llama-3-8b, weight: 90}
      - {model: llama-3-8b-canary-lora, weight: 10}

`RoutingRules.route(request)` picks the target, sets `request.target_model` and returns the names
to rewrite: the upstream body gets the target, the response gets the client's name back.
Selection is deterministic: `hash` maps xxhash64 of the key to [0, 1); `random` draws from an RNG
seeded by `seed`. A target may be a LoRA adapter; the router serves it from its base model's pool.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pydantic
import xxhash

from ..request import InferenceRequest

__all__ = ["rewrite_model", "RouteChoice", "RouteSpec", "RoutingRules", "TargetSpec"]


class TargetSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    model: str = pydantic.Field(min_length=1)
    weight: float = pydantic.Field(1.0, ge=0)


class RouteSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    model: str = pydantic.Field(min_length=1)
    targets: list[TargetSpec] = pydantic.Field(min_length=1)
    split: Literal["hash", "random"] = "hash"
    hash_header: str | None = pydantic.Field(None, alias="hashHeader")
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _weights(self) -> "RouteSpec":
        if sum(t.weight for t in self.targets) <= 0:
            raise ValueError(f"route {self.model!r}: target weights must not all be 0")
        return self


@dataclass(slots=True, frozen=True)
class RouteChoice:
    """`target_model` goes upstream; `client_model` is written back into the response."""

    client_model: str
    target_model: str

    @property
    def rewritten(self) -> bool:
        return self.client_model != self.target_model


class _Route:
    def __init__(self, spec: RouteSpec) -> None:
        self.spec = spec
        self.names = [t.model for t in spec.targets if t.weight > 0]
        total = sum(t.weight for t in spec.targets if t.weight > 0)
        acc, self.cum = 0.0, []
        for t in spec.targets:
            if t.weight > 0:
                acc += t.weight / total
                self.cum.append(acc)
        self.cum[-1] = 1.0
        self.rng = random.Random(spec.seed)

    def pick(self, request: InferenceRequest) -> str:
        if len(self.names) == 1:
            return self.names[0]
        if self.spec.split == "random":
            u = self.rng.random()
        else:
            key = request.request_id
            if self.spec.hash_header:
                key = request.headers.get(self.spec.hash_header.lower()) or key
            u = xxhash.xxh64_intdigest(key.encode()) / 2.0**64
        return self.names[min(bisect.bisect_right(self.cum, u), len(self.names) - 1)]


class RoutingRules:
    """All model routes, by client-facing name."""

    def __init__(self, specs: list[RouteSpec] = ()) -> None:  # type: ignore[assignment]
        self._routes: dict[str, _Route] = {}
        for s in specs:
            if s.model in self._routes:
                raise ValueError(f"model route {s.model!r} is defined twice")
            self._routes[s.model] = _Route(s)

    def __contains__(self, model: str) -> bool:
        return model in self._routes

    def client_models(self) -> list[str]:
        """Client-facing names the rules add (for /v1/models)."""
        return list(self._routes)

    def targets(self) -> set[str]:
        return {n for r in self._routes.values() for n in r.names}

    def route(self, request: InferenceRequest) -> RouteChoice:
        """Pick the target for `request.model` and set `request.target_model`."""
        r = self._routes.get(request.model)
        target = r.pick(request) if r is not None else request.model
        request.target_model = target
        return RouteChoice(request.model, target)


def rewrite_model(raw: bytes | dict[str, Any], model: str) -> bytes:
    """The JSON body with its `model` set to `model` (orjson; other fields untouched)."""
    body = orjson.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else dict(raw)
    body["model"] = model
    return orjson.dumps(body)
