"""Plugin protocols of the scheduler and the values that flow between them.

A scheduling cycle runs one or more *profiles*. A profile filters the candidate endpoints
(filters run in order), scores the survivors (each scorer returns one score in [0, 1] per
endpoint, multiplied by its weight and summed) and hands the totals to its picker, which
returns endpoints best first (the first is the target, the rest are fallbacks). A *profile
handler* chooses which profiles run (e.g. prefill then decode) and combines their results.

Any plugin may also implement the lifecycle hooks of `LifecycleHooks`; the scheduler calls
them on every plugin that has them.

Plugins hand data to each other through the cycle's context under typed `DataKey`s, never bare
strings: a plugin declares the keys it writes in `produces` and those it reads in `consumes`,
and the scheduler refuses a config where a consumed key has no configured producer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import (Any, ClassVar, Generic, NamedTuple, Protocol, Sequence, TypeVar,
                    runtime_checkable)

from ..endpoint import Endpoint
from ..request import InferenceRequest

__all__ = ["CycleContext", "DataKey", "Filter", "LifecycleHooks", "Picker", "Plugin",
           "ProfileHandler", "ProfileResult", "SchedulingResult", "ScoredEndpoint", "Scorer"]


T = TypeVar("T")


class DataKey(NamedTuple, Generic[T]):
    """The typed name of data one plugin produces in a scheduling cycle and others consume.
    A named tuple: equal by value, and hashed in C (every plugin looks its data up by one,
    several times a decision; a dataclass's hash is a Python call)."""

    name: str
    #: what the value is, for the config check's messages (e.g. `dict[str, int]`)
    type: Any

    def __str__(self) -> str:
        return f"{self.name} ({self.type.__name__ if isinstance(self.type, type) else self.type})"


@dataclass(slots=True)
class CycleContext:
    """Per-cycle state: the time, a seeded RNG, and the data plugins share in a cycle (under
    `DataKey`s, `get` / `put`) or keep for themselves (a plugin's own scratch, e.g. the prompt's
    block hashes computed once for scoring and the hook, under a key private to it)."""

    now: float
    rng: random.Random
    data: dict[Any, Any] = field(default_factory=dict)
    #: keep each scorer's raw scores in `ProfileResult.breakdown`
    debug: bool = False

    def get(self, key: DataKey[T]) -> T | None:
        return self.data.get(key)

    def put(self, key: DataKey[T], value: T) -> T:
        self.data[key] = value
        return value


@dataclass(slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(slots=True)
class ProfileResult:
    """What one profile chose: `targets` best first; `scores` the weighted totals by name."""

    profile: str
    targets: list[Endpoint]
    scores: dict[str, float] = field(default_factory=dict)
    #: per-scorer raw scores, {scorer name: {endpoint name: score}} (for debugging and metrics)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class SchedulingResult:
    """The decision of one cycle. `primary` names the profile whose target receives the request."""

    primary: str
    profiles: dict[str, ProfileResult]

    @property
    def target(self) -> Endpoint:
        return self.profiles[self.primary].targets[0]

    @property
    def targets(self) -> list[Endpoint]:
        """Primary target first, then fallbacks."""
        return self.profiles[self.primary].targets


class Plugin(Protocol):
    #: the `type` string used in EndpointPickerConfig
    type_name: ClassVar[str]
    name: str
    #: the cycle data it writes and reads (`BasePlugin` declares none; the scheduler checks
    #: at config load that every consumed key has a configured producer)
    produces: Sequence[DataKey[Any]]
    consumes: Sequence[DataKey[Any]]


@runtime_checkable
class Filter(Protocol):
    type_name: ClassVar[str]
    name: str

    def filter(self, ctx: CycleContext, request: InferenceRequest,
               endpoints: list[Endpoint]) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Protocol):
    type_name: ClassVar[str]
    name: str

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        """One score in [0, 1] per endpoint, in the order given."""
        ...


@runtime_checkable
class Picker(Protocol):
    type_name: ClassVar[str]
    name: str

    def pick(self, ctx: CycleContext, request: InferenceRequest,
             scored: list[ScoredEndpoint]) -> list[Endpoint]:
        """Endpoints best first; empty only when `scored` is empty."""
        ...


@runtime_checkable
class ProfileHandler(Protocol):
    type_name: ClassVar[str]
    name: str

    def pick_profiles(self, ctx: CycleContext, request: InferenceRequest,
                      profiles: Sequence[str], results: dict[str, ProfileResult]) -> list[str]:
        """Names of the profiles to run next, given those already run; [] ends the cycle."""
        ...

    def process_results(self, ctx: CycleContext, request: InferenceRequest,
                        results: dict[str, ProfileResult]) -> SchedulingResult: ...


class LifecycleHooks(Protocol):
    """Optional methods any plugin may define; the scheduler calls those that exist."""

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        """After a decision is made and the request is about to be sent (index updates)."""

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        """The proxy reports which endpoint actually served (may differ after a fallback)."""

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        """The first response bytes came back from `endpoint`: its prefill is over. Shells that
        never see the response body (ext_proc without body streaming) do not call it."""

    def on_finished(self, request: InferenceRequest, endpoint: Endpoint, now: float,
                    usage: dict[str, Any] | None) -> None:
        """The response finished (or failed); `usage` is the OpenAI usage object when known."""

    def bind(self, plugins: dict[str, Any]) -> None:
        """Called once after every configured plugin exists, with them all by name: resolve
        references to other plugins here (raise ConfigError when one is missing)."""

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        """Discovery dropped the endpoint; forget its state."""
