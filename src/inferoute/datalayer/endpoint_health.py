"""Endpoint health for both shells (`inferoute serve`, `inferoute epp`): the core `HealthTracker`
fed by real outcomes (the gateway's own attempts; the answers Envoy reports to the picker).

Passive outlier detection is on by default: every upstream attempt is reported (`record`: a
connect error, a timeout, a 5xx other than 503 or a mid-stream failure is a failure; a 429 or
503 is back-pressure, not reported; another 4xx is the client's fault and counts as success), and an endpoint that keeps failing is ejected (`healthy = False`,
so it is not ready) for a growing back-off, then tried again. Active checks (off by default)
GET each endpoint's health path on a timer. Settings: the `health:` section of the serving
config, `{outlier: OutlierSpec, active: ActiveCheckSpec}` (see docs/admission.md).

Always on: the served model is checked on every scrape. A /metrics page names the model its
samples are for (`model_name`); when that changes and the pool's model is not among the names
(or the endpoint was out for serving another model), the endpoint's `/v1/models` is read at
once, and its answer decides (a page may name only the first of a server's aliases). So a
replica restarted with another model is out within one scrape interval plus one `/v1/models`
read. Pages without `model_name` (and a page that keeps naming the same model) rely on the
full read at start and every `MODELS_INTERVAL` seconds.
An endpoint that does not list its pool's model is not ready (logged with what it serves),
and a pool none of whose endpoints serves its model is logged as such at start and shown by
`/ready` (`problems`); the smallest `max_model_len` reported is the pool's context length
(tenants cap their token pre-charge with it). A 429 or 503 is back-pressure (`back_off`), not
a failure.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from ..aiotasks import cancel_tasks
from ..core.endpoint import Endpoint
from ..core.health import ActiveCheckSpec, HealthEvent, HealthTracker, OutlierSpec
from .runtime import DataLayer

log = logging.getLogger("inferoute.health")

TICK = 0.5
#: seconds between reads of every endpoint's /v1/models
MODELS_INTERVAL = 5.0
#: how long one /v1/models read may take
MODELS_TIMEOUT = 2.0
#: endpoints whose last page's model names are remembered
MAX_REMEMBERED = 4096


class EndpointHealth:
    """One `HealthTracker` per pool, a ticker for ejection ends and active probes."""

    def __init__(self, data: DataLayer, outlier: OutlierSpec | None = None,
                 active: ActiveCheckSpec | None = None) -> None:
        self.data = data
        self.outlier = outlier or OutlierSpec()
        self.active = active or ActiveCheckSpec()
        self.trackers = {name: HealthTracker(mp.pool, self.outlier, self.active)
                         for name, mp in data.router.pools.items()}
        self._task: asyncio.Task[None] | None = None
        #: pool -> the smallest max_model_len its serving endpoints reported
        self.context_lengths: dict[str, int] = {}
        self._next_models = 0.0
        #: (pool, endpoint) -> the model names its last page carried
        self._page_models: dict[tuple[str, str], tuple[str, ...]] = {}
        #: per-endpoint /v1/models reads the scrapes asked for, at most one each at a time
        self._reads: dict[tuple[str, str], asyncio.Task[None]] = {}
        data.add_page_hook(self.scraped)

    def record(self, pool: str, ep: Endpoint, ok: bool) -> None:
        """One upstream outcome of a request of `pool` on `ep`."""
        tracker = self.trackers.get(pool)
        if tracker is not None:
            self._log(tracker.record(ep, ok, self.data.now()))

    def failure_streak(self, pool: str, ep: Endpoint) -> int:
        """Failures in a row of `ep` in `pool` (0 after a success or when unknown)."""
        tracker = self.trackers.get(pool)
        return tracker.failure_streak(ep) if tracker is not None else 0

    def back_off(self, pool: str, ep: Endpoint, seconds: float) -> None:
        """`ep` answered 429/503: skip it for `seconds` while others can be tried."""
        tracker = self.trackers.get(pool)
        if tracker is not None:
            tracker.back_off(ep, self.data.now(), seconds)

    def backing_off(self, pool: str, ep: Endpoint) -> bool:
        tracker = self.trackers.get(pool)
        return tracker is not None and tracker.backing_off(ep, self.data.now())

    def not_serving(self, pool: str, ep: Endpoint) -> None:
        """`ep` answered 404 for the pool's own model: not ready until /v1/models lists it."""
        tracker = self.trackers.get(pool)
        if tracker is not None:
            served = tuple(m for m in tracker.served(ep) if m != pool)
            self._served_event(pool, tracker.record_served(ep, served, pool, self.data.now()),
                               served)

    def problems(self, pool: str) -> list[str]:
        """Why endpoints of `pool` are out for good reasons a user must fix (wrong model)."""
        tracker = self.trackers.get(pool)
        if tracker is None:
            return []
        return [f"{ep.name} serves {_names(tracker.served(ep))}, not '{pool}'"
                for ep in tracker.pool if tracker.state(ep) == "wrong-model"]

    def _served_event(self, pool: str, event: HealthEvent | None,
                      served: tuple[str, ...]) -> None:
        if event is None:
            return
        if event.kind == "wrong-model":
            log.warning("endpoint %s serves %s, not the pool's model '%s': not ready until it "
                        "does", event.endpoint, _names(served), pool)
        else:
            log.info("endpoint %s serves the pool's model '%s' again", event.endpoint, pool)

    async def _models_of(self, ep: Endpoint) -> tuple[tuple[str, ...], int | None] | None:
        """(model ids, max_model_len) from `ep`'s /v1/models; None when it cannot say."""
        session = self.data.session
        if session is None:
            return None
        try:
            async with session.get(ep.url + "/v1/models",
                                   timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT)) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
            cards = [c for c in body["data"] if isinstance(c, dict)]
            ids = tuple(str(c["id"]) for c in cards if "id" in c)
            if not ids:  # lists nothing: it does not say (a stand-in answering any name)
                return None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError,
                TypeError):
            return None
        lengths = [c["max_model_len"] for c in cards if isinstance(c.get("max_model_len"), int)
                   and c.get("parent") is None]
        return ids, min(lengths) if lengths else None

    def scraped(self, pool: str, ep: Endpoint) -> None:
        """A fresh page of `ep` (in `pool`): read its /v1/models now if the model its page
        names changed away from the pool's, or back while it is out for serving another."""
        names = ep.metrics.model_names
        key = (pool, ep.name)
        if not names or self._page_models.get(key) == names:
            return
        if len(self._page_models) >= MAX_REMEMBERED:  # endpoints come and go: start afresh
            self._page_models.clear()
        self._page_models[key] = names
        tracker = self.trackers.get(pool)
        if tracker is None or self._task is None:
            return
        if pool in names and tracker.state(ep) != "wrong-model":
            return
        task = self._reads.get(key)
        if task is None or task.done():
            self._reads[key] = asyncio.get_running_loop().create_task(
                self._check_one(pool, tracker, ep), name=f"models {ep.name}")

    async def _check_one(self, pool: str, tracker: HealthTracker, ep: Endpoint) -> None:
        try:
            answer = await self._models_of(ep)
            if answer is not None:
                self._apply(pool, tracker, ep, answer)
        finally:
            self._reads.pop((pool, ep.name), None)

    def _apply(self, pool: str, tracker: HealthTracker, ep: Endpoint,
               answer: tuple[tuple[str, ...], int | None]) -> int | None:
        """Record what `ep` serves; its context length when it serves the pool's model."""
        served, length = answer
        self._served_event(pool, tracker.record_served(ep, served, pool, self.data.now()),
                           served)
        return length if pool in served else None

    async def check_models(self) -> None:
        """Read every endpoint's /v1/models once and apply what they say."""
        first = not self.context_lengths and self._next_models == 0.0
        for name, tracker in self.trackers.items():
            eps = list(tracker.pool)
            answers = await asyncio.gather(*(self._models_of(ep) for ep in eps))
            lengths = [length for ep, answer in zip(eps, answers) if answer is not None
                       and (length := self._apply(name, tracker, ep, answer)) is not None]
            if lengths:
                self.context_lengths[name] = min(lengths)
            told = [a for a in answers if a is not None]
            if first and told and not any(name in a[0] for a in told):
                log.warning("pool '%s': no endpoint serves model '%s' (they serve %s); its "
                            "requests get 503 until one does", name, name,
                            _names(tuple(sorted({m for a in told for m in a[0]}))))

    @staticmethod
    def _log(event: HealthEvent | None) -> None:
        if event is None:
            return
        if event.kind in ("ejected", "unhealthy"):
            log.warning("endpoint %s %s", event.endpoint, event.kind)
        else:
            log.info("endpoint %s %s", event.endpoint, event.kind)

    async def _probe(self, tracker: HealthTracker, ep: Endpoint) -> None:
        session = self.data.session
        ok = False
        if session is not None:
            try:
                async with session.get(ep.url + self.active.path,
                                       timeout=aiohttp.ClientTimeout(total=self.active.timeout)
                                       ) as resp:
                    ok = resp.status < 500
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ok = False
        self._log(tracker.record_check(ep, ok, self.data.now()))

    async def _run(self) -> None:
        while True:
            now = self.data.now()
            if now >= self._next_models:
                await self.check_models()
                self._next_models = now + MODELS_INTERVAL
            await asyncio.sleep(TICK)
            now = self.data.now()
            probes = []
            for tracker in self.trackers.values():
                for event in tracker.tick(now):
                    self._log(event)
                probes += [self._probe(tracker, ep) for ep in tracker.due_checks(now)]
            if probes:
                await asyncio.gather(*probes)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def close(self) -> None:
        task, self._task = self._task, None
        reads, self._reads = list(self._reads.values()), {}
        await cancel_tasks(task, *reads)


def _names(models: tuple[str, ...]) -> str:
    return ", ".join(f"'{m}'" for m in models[:5]) if models else "nothing it named"
