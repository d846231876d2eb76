"""Drives one sans-I/O Engine in real time on the asyncio loop.

The runner steps the engine, sleeps until the step's end (its modelled duration times the time
scale) and then hands the step's outputs to the waiting requests. Time is tracked against
deadlines rather than "now", so the small lateness of every wake-up does not accumulate: token
timing follows the model as long as the process keeps up. If the loop falls more than `max_lag`
seconds behind (an overloaded CPU) the runner resynchronises and counts it, rather than
bursting tokens to catch up.

Model time is a fixed linear function of the loop clock: `model = m0 + (wall - w0) / scale`,
re-anchored only when the scale changes. With `time_scale` 2 the simulated GPU is twice as slow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from .engine import Engine, SimRequest, TokenOutput

#: finished-request timings kept for `GET /admin/timings`
TIMINGS_KEPT = 4096
#: re-check interval of an engine that has requests but could schedule none
IDLE_POLL = 0.05


@dataclass(slots=True, eq=False)
class RequestHandle:
    """One request's view of the engine: its outputs arrive here as steps complete."""

    request_id: str
    arrival: float                      # loop time the request arrived at the server
    max_tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated: int = 0
    scheduled_at: float | None = None   # loop time of the step that first scheduled it
    first_at: float | None = None       # loop time the first token was delivered
    last_at: float | None = None
    finished: bool = False
    finish_reason: str | None = None
    _items: deque[TokenOutput] = field(default_factory=deque)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def _push(self, out: TokenOutput) -> None:
        self._items.append(out)
        self._event.set()

    async def next_outputs(self) -> list[TokenOutput]:
        """Wait for and return every output delivered since the last call."""
        while not self._items:
            self._event.clear()
            await self._event.wait()
        items = list(self._items)
        self._items.clear()
        return items


@dataclass(slots=True)
class RunnerStats:
    """How closely the runner tracked the model (wall seconds)."""

    steps: int = 0
    busy_model_seconds: float = 0.0
    late_sum: float = 0.0
    late_max: float = 0.0
    resyncs: int = 0

    def to_dict(self) -> dict[str, Any]:
        mean = self.late_sum / self.steps if self.steps else 0.0
        return {"steps": self.steps, "busy_model_seconds": round(self.busy_model_seconds, 6),
                "mean_wakeup_lateness_s": round(mean, 6),
                "max_wakeup_lateness_s": round(self.late_max, 6), "resyncs": self.resyncs}


class EngineRunner:
    """Real-time loop around one Engine; `submit` requests, `await handle.next_outputs()`."""

    def __init__(self, engine: Engine, *, time_scale: float = 1.0, max_lag: float = 0.1,
                 metrics: Any | None = None, publish: Callable[[list[Any]], None] | None = None,
                 kv_events: bool = False) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.engine = engine
        self.metrics = metrics
        self._publish = publish
        self._kv_events = kv_events
        self.max_lag = max_lag
        self.stats = RunnerStats()
        self._scale = time_scale
        self._loop: asyncio.AbstractEventLoop | None = None
        self._m0 = 0.0
        self._w0 = 0.0
        self._next_start: float | None = None    # loop time the next step starts (when busy)
        self._handles: dict[str, RequestHandle] = {}
        self._timings: OrderedDict[str, dict[str, float | int]] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- clock -------------------------------------------------------------------------------

    def _model_at(self, wall: float) -> float:
        return self._m0 + (wall - self._w0) / self._scale

    def _now(self) -> float:
        assert self._loop is not None, "runner not started"
        return self._loop.time()

    def model_now(self) -> float:
        """Model time for an arrival now; never later than the next step's start."""
        wall = self._now()
        if self._next_start is not None and wall > self._next_start:
            wall = self._next_start
        return self._model_at(wall)

    @property
    def time_scale(self) -> float:
        return self._scale

    @time_scale.setter
    def time_scale(self, value: float) -> None:
        if value <= 0:
            raise ValueError("time_scale must be positive")
        if self._loop is not None:
            wall = self._now()
            self._m0, self._w0 = self._model_at(wall), wall
        self._scale = value

    # -- requests ----------------------------------------------------------------------------

    def submit(self, req: SimRequest, arrival: float | None = None) -> RequestHandle:
        """Add a request to the engine; `arrival` (loop time) defaults to now."""
        now = self._now()
        handle = RequestHandle(req.request_id, arrival=now if arrival is None else arrival,
                               max_tokens=req.max_tokens, prompt_tokens=len(req.prompt_tokens))
        self.engine.add_request(req, self.model_now())
        self._handles[req.request_id] = handle
        self._wake.set()
        return handle

    def abort(self, request_id: str) -> None:
        """Abort an unfinished request (client gone); its blocks stay as cache."""
        handle = self._handles.pop(request_id, None)
        if handle is None:
            return
        self.engine.abort(request_id, self.model_now())
        handle.finished, handle.finish_reason = True, "abort"
        if self.metrics is not None:
            self.metrics.request_finished("abort", handle.prompt_tokens, handle.generated,
                                          self._now() - handle.arrival)
        self._wake.set()  # an abort can leave the engine idle or free blocks for waiters

    def timings(self) -> dict[str, dict[str, float | int]]:
        """Model-time token timing of recently finished requests, by request id."""
        return dict(self._timings)

    # -- loop --------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._w0 = self._loop.time()
        self._m0 = 0.0
        self._task = self._loop.create_task(self._run(), name=f"runner-{self.engine.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        engine, loop = self.engine, self._now
        while True:
            if not engine.has_work():
                self._next_start = None
                self._wake.clear()
                if not engine.has_work():
                    await self._wake.wait()
                continue
            start = self._next_start if self._next_start is not None else loop()
            out = engine.step(self._model_at(start))
            if not out.outputs and out.duration <= 0:
                # nothing schedulable (e.g. every request waits for a LoRA slot or for
                # blocks): wait for an arrival or abort rather than spin
                self._next_start = None
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
                continue
            end = start + out.duration * self._scale
            self._next_start = end
            for rid in out.first_scheduled:
                h = self._handles.get(rid)
                if h is not None:  # (a late loop can start a step before an arrival it takes)
                    h.scheduled_at = max(start, h.arrival)
            delay = end - loop()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop()
            late = now - end
            st = self.stats
            st.steps += 1
            st.busy_model_seconds += out.duration
            if late > 0:
                st.late_sum += late
                st.late_max = max(st.late_max, late)
            if late > self.max_lag:
                st.resyncs += 1
                self._next_start = now
            self._deliver(out.outputs, now, self._model_at(end))
            if self._kv_events and self._publish is not None:
                self._publish(engine.drain_kv_events())

    def _deliver(self, outputs: list[TokenOutput], now: float, model_end: float) -> None:
        m = self.metrics
        handles = self._handles
        for o in outputs:
            h = handles.get(o.request_id)
            if h is None:
                continue
            if o.new_tokens:
                if h.first_at is None:
                    h.first_at = now
                    h.prompt_tokens, h.cached_tokens = o.prompt_tokens, o.cached_tokens
                    if m is not None:
                        m.ttft.observe(now - h.arrival)
                        m.prompt_tokens.inc(o.prompt_tokens)
                    self._timings_start(h.request_id, model_end)
                elif m is not None and h.last_at is not None:
                    m.itl.observe(now - h.last_at)
                h.last_at = now
                h.generated += o.new_tokens
                if m is not None:
                    m.generation_tokens.inc(o.new_tokens)
                t = self._timings.get(h.request_id)
                if t is not None:
                    t["model_last"] = model_end
                    t["tokens"] = h.generated
            if o.finished:
                h.finished, h.finish_reason = True, o.finish_reason or "stop"
                del handles[o.request_id]
                if m is not None:
                    decode = None if h.first_at is None else now - h.first_at
                    m.request_finished(h.finish_reason, h.prompt_tokens, h.generated,
                                       now - h.arrival, decode)
                    if h.scheduled_at is not None and h.first_at is not None:
                        m.request_phases(h.scheduled_at - h.arrival, h.first_at - h.scheduled_at)
            h._push(o)

    def _timings_start(self, request_id: str, model_first: float) -> None:
        self._timings[request_id] = {"model_first": model_first, "model_last": model_first,
                                     "tokens": 0, "scale": self._scale}
        while len(self._timings) > TIMINGS_KEPT:
            self._timings.popitem(last=False)
