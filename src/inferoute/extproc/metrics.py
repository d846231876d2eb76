"""Report picker streams to the shared `Observability` metrics, at the same points of a
request's life and with the same values as the HTTP gateway's proxy does.

- refused before scheduling: `request_rejected(model, target, status)`;
- scheduled: `scheduled(decision seconds, prefix hit ratio)`, `request_started(model, target,
  body bytes)`, `dispatched(pool, endpoint)`;
- Envoy served from another endpoint (a fallback): `released` + `retried` + `dispatched`;
- over: `released(pool, endpoint)` and `request_finished(...)` with latency from arrival, TTFT
  (first response body byte), usage, response bytes, and an error code: the HTTP status when it
  is 400 or more, `client_disconnect` when the stream ended before the response did.
"""

from __future__ import annotations

from ..core.endpoint import Endpoint
from ..core.errors import InferouteError
from ..observability import Observability
from .protocol import PickerStream


class MetricsObserver:
    """A `StreamObserver` writing to an `Observability` instance."""

    def __init__(self, obs: Observability) -> None:
        self.obs = obs

    def routed(self, s: PickerStream, now: float) -> None:
        assert s.request is not None and s.decision is not None
        req, obs = s.request, self.obs
        obs.scheduled(s.schedule_seconds, req.prefix_cache_hit_ratio)
        obs.request_started(req.model, req.target_model, s.request_size)
        if s.decision.endpoint is not None:
            obs.dispatched(s.decision.pool.model, s.decision.endpoint.name)

    def moved(self, s: PickerStream, old: Endpoint, now: float) -> None:
        assert s.decision is not None and s.decision.endpoint is not None
        pool = s.decision.pool.model
        self.obs.released(pool, old.name)
        self.obs.retried(pool)
        self.obs.dispatched(pool, s.decision.endpoint.name)

    def rejected(self, s: PickerStream, error: InferouteError, now: float) -> None:
        model = s.request.model if s.request is not None else "unknown"
        target = s.request.target_model if s.request is not None else model
        self.obs.request_rejected(model, target, str(error.status))

    def finished(self, s: PickerStream, now: float) -> None:
        assert s.request is not None and s.decision is not None
        req = s.request
        if s.decision.endpoint is not None:
            self.obs.released(s.decision.pool.model, s.decision.endpoint.name)
        if s.status >= 400:
            error_code: str | None = str(s.status)
        elif not s.completed:
            error_code = "client_disconnect"
        else:
            error_code = None
        ttft = None if s.first_byte_at is None else s.first_byte_at - req.arrival_time
        self.obs.request_finished(req.model, req.target_model,
                                  latency=now - req.arrival_time, ttft=ttft, usage=s.usage,
                                  response_bytes=s.response_bytes, error_code=error_code)
