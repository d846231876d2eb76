"""The asyncio side of the core's admission control: one driver for the gateway and the picker.

Enabled by an `admission:` section in the serving config (or `--admission FILE`); the rules
are in docs/admission.md. The core `AdmissionController` decides admit / queue / shed; this
module makes queued requests *wait*: each waiting request (an HTTP request, or an ext_proc
stream that simply stays open) holds a future that `pump()` resolves when the controller
releases it (or fails with 429/503 when its TTL passes). `pump()` runs after every enqueue,
after every finished request, and from a ticker every 20 ms while anything waits, which also
catches capacity freed by fresh scrapes. Admission and scheduling share the core's candidate
rule (`Router.candidates`: ready, and live when any endpoint is).

The controller is told what the dispatch budget needs: every scrape (`observe`, a data-layer
page hook) and every request sent to and finished on an endpoint (`dispatched` / `finished`,
a router listener, which also pumps), so a request that ends frees its slot for a waiting one
at once, in the gateway and in the picker alike, not at the next tick or scrape.

Per request: `route_model` applies a model route (the picker's; the gateway routes itself),
`check` classifies and admits or queues (sync: None, or a `Ticket` to `wait` for), `admit` is
both for the gateway (async; returns the seconds waited).
"""

from __future__ import annotations

import asyncio
import logging

from ..aiotasks import cancel_tasks
from ..core.admission import AdmissionConfig, Admitted, ReleaseRule, Ticket
from ..core.admission.slot_feed import SlotFeed
from ..core.endpoint import Endpoint, Pool
from ..core.request import InferenceRequest
from ..core.router import ModelPool, Router
from .runtime import DataLayer

log = logging.getLogger("inferoute.admission")

#: the ticker's period while requests wait
TICK = 0.02


def release_rules(router: Router) -> dict[str, ReleaseRule]:
    """Each pool's release rule: the first plugin of its scheduler that is one."""
    out: dict[str, ReleaseRule] = {}
    for model, mp in router.pools.items():
        rule = next((p for p in mp.scheduler.plugins.values() if isinstance(p, ReleaseRule)),
                    None)
        if rule is not None:
            out[model] = rule
    return out


class AdmissionDriver:
    """Classify, admit (maybe after a wait), and release queued requests as capacity frees."""

    def __init__(self, config: AdmissionConfig, data: DataLayer, *, tick: float = TICK,
                 rules_only: bool = False) -> None:
        self.config = config
        self.data = data
        self.tick = tick
        # a pool whose policy has a release rule (e.g. `kv-fit-filter`) releases its waiting
        # requests by that rule, as the virtual benchmark does; `rules_only`: nothing else
        # (the gateway without an admission section, core/admission/controller.py)
        self.controller = config.controller(candidates_of=self._candidates,
                                            release=release_rules(data.router),
                                            rules_only=rules_only)
        self.rules = config.routing_rules()
        self._ticker: asyncio.Task[None] | None = None
        data.add_page_hook(self.controller.observe)
        data.router.listeners.append(SlotFeed(self.controller, on_end=self._pump_safely))

    @classmethod
    def for_gateway(cls, config: AdmissionConfig | None,
                    data: DataLayer) -> AdmissionDriver | None:
        """The gateway's admission: its section's, else, when a pool's policy has a release
        rule (a policy that holds requests needs a queue to hold them in), admission for the
        rules alone (`rules_only`: the other pools, and that one while its rule does not hold,
        go at once), else none."""
        if config is not None:
            return cls(config, data)
        if release_rules(data.router):
            return cls(AdmissionConfig(), data, rules_only=True)
        return None

    def _candidates(self, pool: Pool, now: float) -> list[Endpoint]:
        """The endpoints the scheduler will pick from (ready, and live when any is), so the
        dispatch budget counts only room where admitted requests can go: counted on a replica
        whose scrape runs late, it let requests through that all went to the others."""
        mp = self.data.router.pools.get(pool.model)
        if mp is None or mp.pool is not pool:
            return [ep for ep in pool if self.data.is_ready(ep, now)]
        return self.data.router.candidates(mp, now)

    # -- per request ---------------------------------------------------------------------------

    def route_model(self, request: InferenceRequest) -> None:
        """Apply a model route (weighted split across models or adapters), if one matches."""
        if request.model in self.rules:
            self.rules.route(request)

    def check(self, request: InferenceRequest, mp: ModelPool, now: float, *,
              tenant_objective: str | None = None,
              tenant_fairness_id: str | None = None) -> Ticket | None:
        """Classify and admit: None to go ahead, a Ticket to `wait` for; raises 429 / 503."""
        self.controller.classify(request, tenant_objective=tenant_objective,
                                 tenant_fairness_id=tenant_fairness_id)
        res = self.controller.admit(request, mp.pool, now)
        return None if isinstance(res, Admitted) else res

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket is released; raises its error on expiry; a cancelled waiter (the
        client went away) leaves the queue."""
        ticket.waiter = asyncio.get_running_loop().create_future()
        self.pump()
        try:
            await ticket.waiter
        except asyncio.CancelledError:
            self.controller.cancel(ticket)
            raise

    async def admit(self, request: InferenceRequest, mp: ModelPool, now: float, *,
                    tenant_objective: str | None = None,
                    tenant_fairness_id: str | None = None) -> float:
        """Return once `request` may be scheduled (seconds it waited); raises 429 or 503."""
        ticket = self.check(request, mp, now, tenant_objective=tenant_objective,
                            tenant_fairness_id=tenant_fairness_id)
        if ticket is None:
            return 0.0
        await self.wait(ticket)
        return self.data.now() - now

    # -- the queue -----------------------------------------------------------------------------

    def pump(self) -> None:
        """Fail expired waiters and wake those the controller releases now."""
        now = self.data.now()
        for ticket, err in self.controller.expire(now):
            waiter = ticket.waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(err)
        for ticket in self.controller.dispatchable(now):
            waiter = ticket.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _pump_safely(self) -> None:
        """`pump` from a router listener: never break the router's books."""
        try:
            self.pump()
        except Exception:  # pragma: no cover
            log.exception("admission pump failed")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            if self.controller.queued():
                try:
                    self.pump()
                except Exception:  # pragma: no cover - never let the ticker die silently
                    log.exception("admission pump failed")

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(),
                                                                  name="admission ticker")

    async def close(self) -> None:
        """Graceful shutdown: every waiting request gets its 503, the ticker stops."""
        for ticket, err in self.controller.drain():
            if ticket.waiter is not None and not ticket.waiter.done():
                ticket.waiter.set_exception(err)
        task, self._ticker = self._ticker, None
        await cancel_tasks(task)
