"""The picker's side of admission control: the core `AdmissionController` driven from asyncio.

Per request (called by the protocol): model routing rules pick the target model, `classify`
sets the objective and priority from headers, `admit` sheds (429), refuses (503) or queues.
A queued request's ext_proc stream simply stays open: `wait` parks it on a future until the
pump releases it (capacity came back) or expires it (TTL: 429 / 503). The pump runs after every
enqueue, after every finished stream and on a 50 ms ticker (scrapes arrive on their own
schedule). The same calls `docs/admission.md` prescribes for any shell.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..aiotasks import cancel_tasks
from ..core.admission import AdmissionConfig, Admitted, Ticket
from ..core.request import InferenceRequest
from ..core.router import ModelPool
from ..datalayer.runtime import DataLayer

log = logging.getLogger("inferoute.extproc")


class AdmissionRunner:
    """Admission for the picker: routing rules, classification, shedding and the queue."""

    def __init__(self, config: AdmissionConfig, data: DataLayer, *, tick: float = 0.05) -> None:
        self.data = data
        self.controller = config.controller(
            candidates_of=lambda pool, now: [ep for ep in pool if data.is_ready(ep, now)])
        self.rules = config.routing_rules()
        self.tick = tick
        self._task: asyncio.Task[None] | None = None

    # -- called by the protocol (synchronously) ------------------------------------------------

    def route_model(self, request: InferenceRequest) -> None:
        """Apply a model route (weighted split across models or adapters), if one matches."""
        if request.model in self.rules:
            self.rules.route(request)

    def admit(self, request: InferenceRequest, pool: ModelPool, now: float) -> Ticket | None:
        """None: go ahead. A Ticket: wait for it. Raises TooManyRequests / NoEndpointAvailable."""
        self.controller.classify(request)
        res = self.controller.admit(request, pool.pool, now)
        return None if isinstance(res, Admitted) else res

    # -- asyncio side -----------------------------------------------------------------------

    async def wait(self, ticket: Any) -> None:
        """Until the ticket is released; raises its error on expiry; a cancelled stream leaves
        the queue."""
        ticket.waiter = asyncio.get_running_loop().create_future()
        self.pump()
        try:
            await ticket.waiter
        except asyncio.CancelledError:
            self.controller.cancel(ticket)
            raise

    def pump(self) -> None:
        now = self.data.clock()
        for t, err in self.controller.expire(now):
            if t.waiter is not None and not t.waiter.done():
                t.waiter.set_exception(err)
        for t in self.controller.dispatchable(now):
            if t.waiter is not None and not t.waiter.done():
                t.waiter.set_result(None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._ticker(), name="admission")

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.pump()
            except Exception:  # a bug must not stop the queue from draining
                log.exception("admission pump failed")

    async def stop(self) -> None:
        """Answer every waiting request (503) and stop the ticker."""
        for t, err in self.controller.drain():
            if t.waiter is not None and not t.waiter.done():
                t.waiter.set_exception(err)
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_tasks(task)
