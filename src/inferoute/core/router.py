"""Body-based routing and request bookkeeping shared by every shell.

`Router` maps a request's model name to the pool that serves it (a base model, an alias, or a
LoRA adapter of a base model), runs that pool's scheduler, and keeps the in-flight bookkeeping
straight: every `dispatch` is matched by exactly one `finish`, whatever happens to the request.
The HTTP gateway, the ext_proc picker and the virtual-time benchmark all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from .candidates import CandidateRule
from .decode_cost import DecodeMark
from .endpoint import Endpoint, Pool
from .errors import ModelNotFound
from .request import InferenceRequest
from .scheduling.framework import SchedulingResult
from .scheduling.scheduler import Scheduler

__all__ = ["Decision", "ModelPool", "Router", "RouterListener"]


@dataclass(slots=True)
class ModelPool:
    """One pool of endpoints and its scheduler; serves `model` plus aliases and adapters."""

    model: str
    pool: Pool
    scheduler: Scheduler
    aliases: tuple[str, ...] = ()
    lora_adapters: tuple[str, ...] = ()


@dataclass(slots=True)
class Decision:
    """A routed request: its pool, the scheduler's result, and where it was actually sent."""

    request: InferenceRequest
    pool: ModelPool
    result: SchedulingResult
    endpoint: Endpoint | None = None
    prompt_tokens: int = 0
    first_token: bool = False
    finished: bool = False
    #: what the autoscaler (`core.autoscale`) notes along the way: whether the request's
    #: prefill had its endpoint to itself (None: not dispatched yet), its mark while it
    #: prefills (endpoint, requests sent there so far, prompt tokens prefilled there so far)
    #: and when the first token came
    unqueued: bool | None = None
    prefill_mark: tuple[str, int, float] | None = None
    first_token_at: float | None = None
    #: the autoscaler's `DecodeMark` from the first token to the end
    decode_mark: DecodeMark | None = None


class RouterListener(Protocol):
    """Told of every request sent to an endpoint (again on a retry elsewhere), its first token
    and its end (e.g. the autoscale estimator, the dashboard)."""

    def dispatched(self, decision: Decision, now: float) -> None: ...

    def first_token(self, decision: Decision, now: float) -> None: ...

    def finished(self, decision: Decision, now: float,
                 usage: dict[str, Any] | None) -> None: ...


class Router:
    """Model name -> pool; schedule; account dispatch and finish."""

    def __init__(self, pools: Iterable[ModelPool] = (), rule: CandidateRule | None = None) -> None:
        #: which endpoints are offered to the scheduler (default: healthy ones, no scraping)
        self.rule = rule or CandidateRule()
        self.pools: dict[str, ModelPool] = {}
        self.listeners: list[RouterListener] = []
        self._names: dict[str, tuple[ModelPool, str | None]] = {}
        for mp in pools:
            self.add_pool(mp)

    def add_pool(self, mp: ModelPool) -> None:
        if mp.model in self.pools:
            raise ValueError(f"model {mp.model!r} has two pools")
        self.pools[mp.model] = mp
        for name in (mp.model, *mp.aliases):
            self._claim(name, mp, None)
        for adapter in mp.lora_adapters:
            self._claim(adapter, mp, adapter)

    def _claim(self, name: str, mp: ModelPool, adapter: str | None) -> None:
        if name in self._names:
            raise ValueError(f"model name {name!r} is served by two pools")
        self._names[name] = (mp, adapter)

    def model_names(self) -> list[str]:
        """Every name a client may put in `model`."""
        return list(self._names)

    def pool_of(self, name: str) -> ModelPool | None:
        """The pool that serves model name `name` (base, alias or adapter), if any."""
        entry = self._names.get(name)
        return entry[0] if entry is not None else None

    def resolve(self, request: InferenceRequest) -> ModelPool:
        """The pool for `request.target_model`; sets `lora_adapter` when it names an adapter."""
        entry = self._names.get(request.target_model)
        if entry is None:
            raise ModelNotFound(f"The model '{request.target_model}' does not exist",
                                param="model")
        mp, adapter = entry
        if adapter is not None:
            request.lora_adapter = adapter
        return mp

    def candidates(self, mp: ModelPool, now: float, *, prefer_fresh: bool = True) -> list[Endpoint]:
        """The endpoints of `mp` the scheduler may pick from at `now` (see `CandidateRule`)."""
        threshold = mp.scheduler.config.saturation_detector.metrics_staleness_threshold
        return self.rule.candidates(mp.pool, now, threshold, prefer_fresh=prefer_fresh)

    def schedule(self, request: InferenceRequest, now: float,
                 candidates: list[Endpoint] | None = None, *, pool: ModelPool | None = None,
                 defer_hooks: bool = False) -> Decision:
        """Resolve the pool (unless given: `pool`) and pick among `candidates` (default: the
        rule's); raises NoEndpointAvailable when none is ready.
        `defer_hooks`: see `Scheduler.schedule` (then call the pool scheduler's
        `run_deferred_hooks` soon)."""
        mp = self.resolve(request) if pool is None else pool
        eps = self.candidates(mp, now) if candidates is None else candidates
        result = mp.scheduler.schedule(request, eps, now, defer_hooks=defer_hooks)
        return Decision(request=request, pool=mp, result=result)

    def dispatch(self, decision: Decision, endpoint: Endpoint, now: float) -> None:
        """The request is being sent to `endpoint` (the target or a fallback)."""
        if decision.endpoint is not None and decision.endpoint is not endpoint:
            # a retry on another endpoint: the first attempt is over
            decision.endpoint.on_finish(decision.prompt_tokens)
        elif decision.endpoint is endpoint:
            return
        decision.endpoint = endpoint
        decision.prompt_tokens = decision.request.prompt_tokens_estimate
        endpoint.on_dispatch(decision.prompt_tokens)
        decision.pool.scheduler.on_served(decision.request, endpoint, now)
        for listener in self.listeners:
            listener.dispatched(decision, now)

    def first_token(self, decision: Decision, now: float) -> None:
        """The first response bytes arrived from the endpoint; idempotent."""
        if decision.first_token or decision.finished or decision.endpoint is None:
            return
        decision.first_token = True
        decision.pool.scheduler.on_first_token(decision.request, decision.endpoint, now)
        for listener in self.listeners:
            listener.first_token(decision, now)

    def finish(self, decision: Decision, now: float,
               usage: dict[str, Any] | None = None) -> None:
        """The request is over (success, error or cancel); idempotent."""
        if decision.finished:
            return
        decision.finished = True
        if decision.endpoint is not None:
            decision.endpoint.on_finish(decision.prompt_tokens)
            decision.pool.scheduler.on_finished(decision.request, decision.endpoint, now, usage)
        for listener in self.listeners:
            listener.finished(decision, now, usage)
