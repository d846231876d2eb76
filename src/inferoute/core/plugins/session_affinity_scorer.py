"""`session-affinity-scorer`: keep the requests of one session on the endpoint that served it.

The session is named by a request header (`headerName`, default `x-session-token`). The scorer
remembers session -> endpoint for the endpoint that actually served the session's last request
(so a fallback retry moves the session), in an LRU of at most `capacity` sessions (default
10,000) whose entries expire `ttl` after their last use (default 10m; `'30s'`, `'10m'` or a
number of seconds). Score: 1 for the remembered endpoint, 0 for every other; requests without
the header, or with an unknown or expired session, score 0 everywhere (no bias).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import pydantic

from ..endpoint import Endpoint
from ..request import InferenceRequest
from ..scheduling.config import parse_duration
from ..scheduling.framework import CycleContext, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams

__all__ = ["SessionAffinityScorer"]


@register
class SessionAffinityScorer(BasePlugin):
    """1 for the endpoint that served this session last (within the TTL), 0 otherwise."""

    type_name = "session-affinity-scorer"
    metric_reads = MetricReads()

    class Params(PluginParams):
        header_name: str = pydantic.Field("x-session-token", min_length=1)
        capacity: int = pydantic.Field(10_000, ge=1, le=10_000_000)
        ttl: float = pydantic.Field(600.0, gt=0, description="seconds; '10m' accepted")

        @pydantic.field_validator("ttl", mode="before")
        @classmethod
        def _duration(cls, v: Any) -> Any:
            return parse_duration(v) if isinstance(v, str) else v

        @pydantic.field_validator("header_name")
        @classmethod
        def _lower(cls, v: str) -> str:
            return v.lower()

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        #: session -> (endpoint name, expiry time); oldest use first
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _session(self, request: InferenceRequest) -> str | None:
        return request.headers.get(self.params.header_name) or None

    def endpoint_for(self, session: str, now: float) -> str | None:
        """The endpoint remembered for `session`, or None when unknown or expired."""
        entry = self._sessions.get(session)
        if entry is None:
            return None
        if entry[1] < now:
            del self._sessions[session]
            return None
        return entry[0]

    def _remember(self, session: str, endpoint: str, now: float) -> None:
        self._sessions[session] = (endpoint, now + self.params.ttl)
        self._sessions.move_to_end(session)
        while len(self._sessions) > self.params.capacity:
            self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)

    def score(self, ctx: CycleContext, request: InferenceRequest,
              endpoints: list[Endpoint]) -> Sequence[float]:
        session = self._session(request)
        known = self.endpoint_for(session, ctx.now) if session else None
        if known is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep.name == known else 0.0 for ep in endpoints]

    def on_scheduled(self, ctx: CycleContext, request: InferenceRequest,
                     result: SchedulingResult) -> None:
        session = self._session(request)
        if session:
            self._remember(session, result.target.name, ctx.now)

    def on_served(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        session = self._session(request)
        if session:
            self._remember(session, endpoint.name, now)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        gone = [s for s, (name, _) in self._sessions.items() if name == endpoint.name]
        for s in gone:
            del self._sessions[s]
