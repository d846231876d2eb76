"""Endpoint health: passive outlier detection and active health-check state (sans-I/O).

Passive: the shell reports every upstream outcome (`record(ep, ok, now)`; a failure is a connect
error, a timeout or a 5xx). An endpoint is *ejected* (`Endpoint.healthy = False`) after
`consecutiveFailures` failures in a row, or when at least `minRequests` outcomes in the current
`interval` fail at `failureRatio` or more. An ejection lasts `baseEjection x 2^(n-1)` for the
n-th ejection (capped at `maxEjection`); then the endpoint is *half-open*: back in rotation,
and its next outcome (a real request, or the active probe when active checks are on) decides:
success closes it, failure ejects it again for longer. Each quiet `interval` forgets one past
ejection. At most `maxEjectionPercent` of the pool is ejected at once (at least one endpoint may
be), so a pool-wide failure is not turned into "no endpoints".

Active: the shell GETs each endpoint's health path when `due_checks(now)` says so and reports
with `record_check`. `unhealthyThreshold` failed checks in a row take the endpoint out;
`healthyThreshold` good ones bring it back.

Served model: the shell reports which models an endpoint serves (`record_served`, from its
`/v1/models` or a 404 for the pool's own model); an endpoint that does not serve the pool's
model is not healthy until it does (no request of the pool can succeed there).

Back-pressure: a 429 or 503 is the endpoint saying "not now", not a failure. `back_off` keeps
it out of the candidates for a while (`backing_off`), without ejecting it: the shell skips it
only while another endpoint can be tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from .endpoint import Endpoint, Pool

__all__ = ["ActiveCheckSpec", "EventKind", "HealthEvent", "HealthTracker", "OutlierSpec"]


def _seconds(v: Any) -> Any:
    from .scheduling.config import parse_duration
    return parse_duration(v) if isinstance(v, str) else v


class OutlierSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    enabled: bool = True
    consecutive_failures: int = pydantic.Field(5, alias="consecutiveFailures", ge=1)
    failure_ratio: float = pydantic.Field(0.5, alias="failureRatio", gt=0, le=1)
    min_requests: int = pydantic.Field(10, alias="minRequests", ge=1)
    interval: float = pydantic.Field(10.0, gt=0)
    base_ejection: float = pydantic.Field(5.0, alias="baseEjection", gt=0)
    max_ejection: float = pydantic.Field(300.0, alias="maxEjection", gt=0)
    max_ejection_percent: float = pydantic.Field(50.0, alias="maxEjectionPercent", ge=0, le=100)

    _dur = pydantic.field_validator("interval", "base_ejection", "max_ejection",
                                    mode="before")(_seconds)


class ActiveCheckSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    enabled: bool = False
    path: str = "/health"
    interval: float = pydantic.Field(5.0, gt=0)
    timeout: float = pydantic.Field(1.0, gt=0)
    unhealthy_threshold: int = pydantic.Field(3, alias="unhealthyThreshold", ge=1)
    healthy_threshold: int = pydantic.Field(2, alias="healthyThreshold", ge=1)

    _dur = pydantic.field_validator("interval", "timeout", mode="before")(_seconds)


EventKind = Literal["ejected", "half-open", "restored", "unhealthy", "healthy", "wrong-model",
                    "serves-model"]


@dataclass(slots=True, frozen=True)
class HealthEvent:
    """A change the shell may log or count."""

    endpoint: str
    kind: EventKind
    until: float | None = None


class _State:
    __slots__ = ("consecutive", "win_start", "win_total", "win_fail", "ejections",
                 "ejected_until", "half_open", "quiet_since", "active_ok", "check_ok",
                 "check_fail", "next_check", "serves", "served", "backoff_until")

    def __init__(self, now: float) -> None:
        self.consecutive = 0
        self.win_start = now
        self.win_total = 0
        self.win_fail = 0
        self.ejections = 0
        self.ejected_until: float | None = None
        self.half_open = False
        self.quiet_since = now
        self.active_ok = True
        self.check_ok = 0
        self.check_fail = 0
        self.next_check = now
        self.serves = True
        #: the model names the endpoint said it serves (last report), for log lines
        self.served: tuple[str, ...] = ()
        self.backoff_until = 0.0


class HealthTracker:
    """Health state of one pool's endpoints; writes the verdict to `Endpoint.healthy`."""

    def __init__(self, pool: Pool, outlier: OutlierSpec | None = None,
                 active: ActiveCheckSpec | None = None) -> None:
        self.pool = pool
        self.outlier = outlier or OutlierSpec()
        self.active = active or ActiveCheckSpec()
        self._states: dict[str, _State] = {}

    def _st(self, ep: Endpoint, now: float) -> _State:
        st = self._states.get(ep.name)
        if st is None:
            st = self._states[ep.name] = _State(now)
        return st

    def state(self, ep: Endpoint) -> str:
        """'wrong-model', 'ejected', 'half-open', 'unhealthy' (active checks), or 'healthy'."""
        st = self._states.get(ep.name)
        if st is None:
            return "healthy"
        if not st.serves:
            return "wrong-model"
        if st.ejected_until is not None:
            return "ejected"
        if not st.active_ok:
            return "unhealthy"
        return "half-open" if st.half_open else "healthy"

    def failure_streak(self, ep: Endpoint) -> int:
        """Failures in a row of `ep` since its last success (retries prefer endpoints at 0)."""
        st = self._states.get(ep.name)
        return st.consecutive if st is not None else 0

    def forget(self, name: str) -> None:
        """Discovery removed the endpoint."""
        self._states.pop(name, None)

    # -- passive --------------------------------------------------------------------------

    def record(self, ep: Endpoint, ok: bool, now: float) -> HealthEvent | None:
        """One upstream outcome on `ep`; returns the transition it caused, if any."""
        if not self.outlier.enabled:
            return None
        st = self._st(ep, now)
        self._advance(ep, st, now)
        if st.ejected_until is not None:
            return None  # a late outcome of a request sent before the ejection
        spec = self.outlier
        if now - st.win_start >= spec.interval:
            st.win_start, st.win_total, st.win_fail = now, 0, 0
        st.win_total += 1
        if ok:
            st.consecutive = 0
            if st.half_open:
                st.half_open = False
                st.quiet_since = now
                return HealthEvent(ep.name, "restored")
            return None
        st.consecutive += 1
        st.win_fail += 1
        trip = (st.half_open or st.consecutive >= spec.consecutive_failures
                or (st.win_total >= spec.min_requests
                    and st.win_fail / st.win_total >= spec.failure_ratio))
        return self._eject(ep, st, now) if trip else None

    def _eject(self, ep: Endpoint, st: _State, now: float) -> HealthEvent | None:
        ejected = sum(1 for s in self._states.values() if s.ejected_until is not None)
        allowed = max(1, int(len(self.pool) * self.outlier.max_ejection_percent / 100))
        if ejected >= allowed:
            return None
        st.ejections += 1
        span = min(self.outlier.max_ejection,
                   self.outlier.base_ejection * 2 ** (st.ejections - 1))
        st.ejected_until = now + span
        st.half_open = False
        st.consecutive = 0
        st.win_start, st.win_total, st.win_fail = now, 0, 0
        self._apply(ep, st)
        return HealthEvent(ep.name, "ejected", st.ejected_until)

    def _advance(self, ep: Endpoint, st: _State, now: float) -> HealthEvent | None:
        """Time-driven transitions: ejection over -> half-open; quiet intervals decay."""
        if st.ejected_until is not None:
            if now < st.ejected_until:
                return None
            st.ejected_until = None
            st.half_open = True
            st.quiet_since = now
            self._apply(ep, st)
            if self.active.enabled:
                st.next_check = now  # probe right away
            return HealthEvent(ep.name, "half-open")
        if st.ejections and not st.half_open:
            quiet = int((now - st.quiet_since) // self.outlier.interval)
            if quiet > 0:
                st.ejections = max(0, st.ejections - quiet)
                st.quiet_since += quiet * self.outlier.interval
        return None

    def tick(self, now: float) -> list[HealthEvent]:
        """Run time-driven transitions for every endpoint (call it every second or so); state
        of endpoints discovery removed from the pool is dropped."""
        events = []
        if len(self._states) > len(self.pool):
            for name in [n for n in self._states if self.pool.get(n) is None]:
                del self._states[name]
        for ep in self.pool:
            st = self._states.get(ep.name)
            if st is not None and (ev := self._advance(ep, st, now)) is not None:
                events.append(ev)
        return events

    def next_transition(self) -> float | None:
        """The earliest time an ejection ends (when `tick` has something to do)."""
        ends = [s.ejected_until for s in self._states.values() if s.ejected_until is not None]
        return min(ends) if ends else None

    # -- served model and back-pressure ------------------------------------------------------

    def record_served(self, ep: Endpoint, served: tuple[str, ...], model: str,
                      now: float) -> HealthEvent | None:
        """`ep` says it serves `served`; it is healthy only if `model` is among them."""
        st = self._st(ep, now)
        st.served = served
        serves = model in served
        if serves == st.serves:
            return None
        st.serves = serves
        self._apply(ep, st)
        return HealthEvent(ep.name, "serves-model" if serves else "wrong-model")

    def served(self, ep: Endpoint) -> tuple[str, ...]:
        """What `ep` last said it serves (empty when unknown)."""
        st = self._states.get(ep.name)
        return st.served if st is not None else ()

    def back_off(self, ep: Endpoint, now: float, seconds: float) -> None:
        """`ep` answered 429/503: leave it alone for `seconds` (not a failure)."""
        st = self._st(ep, now)
        st.backoff_until = max(st.backoff_until, now + seconds)

    def backing_off(self, ep: Endpoint, now: float) -> bool:
        st = self._states.get(ep.name)
        return st is not None and now < st.backoff_until

    # -- active ---------------------------------------------------------------------------

    def due_checks(self, now: float) -> list[Endpoint]:
        """Endpoints to probe now (none while active checks are off, none while ejected)."""
        if not self.active.enabled:
            return []
        due = []
        for ep in self.pool:
            st = self._st(ep, now)
            self._advance(ep, st, now)
            if st.ejected_until is None and now >= st.next_check:
                st.next_check = now + self.active.interval
                due.append(ep)
        return due

    def record_check(self, ep: Endpoint, ok: bool, now: float) -> HealthEvent | None:
        """The result of an active probe of `ep`."""
        st = self._st(ep, now)
        self._advance(ep, st, now)
        if st.half_open and self.outlier.enabled:
            if ok:
                st.half_open = False
                st.quiet_since = now
                return HealthEvent(ep.name, "restored")
            return self._eject(ep, st, now)
        spec = self.active
        if ok:
            st.check_ok += 1
            st.check_fail = 0
            if not st.active_ok and st.check_ok >= spec.healthy_threshold:
                st.active_ok = True
                self._apply(ep, st)
                return HealthEvent(ep.name, "healthy")
        else:
            st.check_fail += 1
            st.check_ok = 0
            if st.active_ok and st.check_fail >= spec.unhealthy_threshold:
                st.active_ok = False
                self._apply(ep, st)
                return HealthEvent(ep.name, "unhealthy")
        return None

    @staticmethod
    def _apply(ep: Endpoint, st: _State) -> None:
        ep.healthy = st.active_ok and st.ejected_until is None and st.serves
