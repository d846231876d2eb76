"""`DataLayer`: the live endpoint state every shell reads (HTTP gateway, Envoy ext_proc picker).

It builds the core `Router` (one `ModelPool` and `Scheduler` per configured model), owns the
aiohttp `ClientSession` of the active health probes (the proxy's upstream requests go through
`gateway/upstream.py`), runs a `Scraper` per endpoint, and lets discovery add and remove
endpoints at run time.

Readiness is the core's `CandidateRule` (ready: healthy and scraped within `readyWindow`, 5 s by
default; fresh: scraped within the scheduler's staleness threshold, 200 ms by default), set on
the router with this layer's scrape settings; `is_ready` and `ready_endpoints` apply it.
`starting` lists the replicas on their way (for the autoscaling estimator, never routed to):
an endpoint not ready and never scraped yet, and what discovery reports (`set_starting`).

Each endpoint's scrapes are paced by what its pool reads (`metric_needs`) and what the
endpoint is doing (`scrape_pacing`): every `scrapeInterval` while a load-sensitive plugin needs
fresh metrics and the gateway's own traffic there or its queue just changed, within the
staleness threshold while it has work, every `scrapeIdleInterval` otherwise.

Per pool it also runs what the pool's scheduler needs beyond metrics: with a
`precise-prefix-cache-scorer`, the pool's tokenizer and one KV-event subscriber per endpoint
(`PreciseRouting`); with `redis:` configured, the sharing of prefix indexes and in-flight load
with the other gateway replicas (`RedisSharing`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import aiohttp

from ..core.candidates import CandidateRule
from ..core.endpoint import Endpoint, Pool
from ..core.errors import ConfigError
from ..core.router import ModelPool, Router
from ..core.scheduling.scheduler import Scheduler
from .kvevents import SubscriberStats
from .serving_config import ServingConfig
from ..core.metricsparse import EngineName
from .precise_pool import PreciseRouting
from .prefix_share import PrefixShare
from .scaleout import RedisSharing, share_indexes
from .metric_needs import ADMISSION_NEEDS, AUTOSCALING_NEEDS, MetricNeeds, needs_of_plugins
from .scrape import Scraper
from .scrape_pacing import ScrapePacer

log = logging.getLogger("inferoute.datalayer")


class EndpointListener(Protocol):
    """Something that follows the endpoints of the pools (see `DataLayer.add_listener`)."""

    def endpoint_added(self, model: str, endpoint: Endpoint) -> None: ...

    def endpoint_removed(self, model: str, endpoint: Endpoint) -> None: ...


class DataLayer:
    """Router + scrapers + HTTP session; `start()` inside a running loop, `close()` at exit."""

    def __init__(self, config: ServingConfig, *, clock: Callable[[], float] = time.monotonic,
                 seed: int | None = None, scrape: bool = True) -> None:
        self.config = config
        self.clock = clock
        self.scrape = scrape
        self.session: aiohttp.ClientSession | None = None
        self._engines: dict[str, EngineName | None] = {}
        #: per pool, what its plugins, admission and autoscaling read from the scrapes
        self.metric_needs: dict[str, MetricNeeds] = {}
        self._busy_period: dict[str, float] = {}
        admission = config.admission_config()
        #: the longest scrape period: four per ready window (one lost scrape never un-readies
        #: an endpoint) and, with admission, within its staleness threshold (which calls
        #: older metrics saturated)
        self._period_cap = config.ready_window / 4
        if admission is not None:
            self._period_cap = min(self._period_cap, admission.saturation_detector
                                   .metrics_staleness_threshold - config.scrape_interval)
        self._scrapers: dict[tuple[str, str], Scraper] = {}
        self._listeners: list[EndpointListener] = []
        self._page_hooks: list[Callable[[str, Endpoint], None]] = []
        self._running = False
        self._precise: dict[str, PreciseRouting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sharing = RedisSharing(config.redis, clock=clock) if config.redis else None
        #: per pool, when discovery says each replica was asked for (`set_starting`), and
        #: when each endpoint was first added here
        self._asked: dict[str, dict[str, float]] = {}
        self._added: dict[tuple[str, str], float] = {}
        pools = []
        for pc in config.pools:
            sched = Scheduler(pc.scheduler_config(), seed=seed)
            pool = Pool(pc.model, pc.build_endpoints())
            if self.sharing is not None:  # before the KV-event subscribers: they feed the index
                self.sharing.add_pool(pc.model, share_indexes(sched.plugins), pool.endpoints)
            try:
                precise = PreciseRouting.for_pool(sched.plugins.values(), pc.kv_events,
                                                  pc.tokenizer)
            except ConfigError as exc:
                raise ConfigError(f"pool {pc.model!r}: {exc}") from None
            if precise is not None:
                self._precise[pc.model] = precise
            self._added.update(((pc.model, ep.name), clock()) for ep in pool)
            pools.append(ModelPool(
                model=pc.model, pool=pool, scheduler=sched,
                aliases=tuple(pc.aliases), lora_adapters=tuple(pc.lora_adapters)))
            self._engines[pc.model] = None if pc.engine == "auto" else pc.engine
            needs = needs_of_plugins(sched.plugins.values())
            if admission is not None:
                needs |= ADMISSION_NEEDS
            if config.autoscaling is not None:
                needs |= AUTOSCALING_NEEDS
            self.metric_needs[pc.model] = needs
            threshold = sched.config.saturation_detector.metrics_staleness_threshold
            if admission is not None:
                threshold = min(threshold,
                                admission.saturation_detector.metrics_staleness_threshold)
            #: a busy endpoint's pages stay younger than the staleness threshold
            self._busy_period[pc.model] = threshold - config.scrape_interval
        self.router = Router(pools, CandidateRule(config.ready_window if scrape else None,
                                                  config.scrape_interval))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the HTTP session and start one scraper per endpoint."""
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300,
                                             keepalive_timeout=60)
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                 timeout=aiohttp.ClientTimeout(total=None))
        self._running = True
        for mp in self.router.pools.values():
            precise = self._precise.get(mp.model)
            for ep in mp.pool:
                self._start_scraper(mp.model, ep)
                if precise is not None:
                    precise.add(ep)
                for listener in self._listeners:
                    listener.endpoint_added(mp.model, ep)
        if self.sharing is not None:
            await self.sharing.start()

    async def close(self) -> None:
        """Stop the scrapers, KV-event subscribers and Redis sharing, and close the session
        (listeners hear every endpoint removed)."""
        if self._running:
            for mp in self.router.pools.values():
                for ep in mp.pool:
                    for listener in self._listeners:
                        listener.endpoint_removed(mp.model, ep)
        self._running = False
        scrapers = list(self._scrapers.values())
        self._scrapers.clear()
        await asyncio.gather(*(s.stop() for s in scrapers), *self._tasks,
                             *(p.close() for p in self._precise.values()))
        if self.sharing is not None:
            await self.sharing.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _start_scraper(self, model: str, ep: Endpoint) -> None:
        if not self.scrape or self.session is None or (model, ep.name) in self._scrapers:
            return
        cfg, needs = self.config, self.metric_needs[model]
        pacer = ScrapePacer(cfg.scrape_interval, cfg.scrape_idle_interval,
                            busy=self._busy_period[model], fresh_load=needs.needs_fresh_load,
                            period_cap=self._period_cap, max_duty=cfg.scrape_max_duty)
        scraper = Scraper(ep, interval=cfg.scrape_interval, timeout=cfg.scrape_timeout,
                          engine=self._engines.get(model), clock=self.clock,
                          on_page=functools.partial(self._paged, model), pacer=pacer,
                          fields=needs.parsed)
        self._scrapers[(model, ep.name)] = scraper
        scraper.start()

    # ------------------------------------------------------------------ discovery

    def add_page_hook(self, hook: Callable[[str, Endpoint], None]) -> None:
        """Call `hook(model, endpoint)` after every scrape that brought fresh metrics (cheap,
        synchronous: it runs in the scrape loop)."""
        self._page_hooks.append(hook)

    def _paged(self, model: str, ep: Endpoint) -> None:
        for hook in self._page_hooks:
            hook(model, ep)

    def add_listener(self, listener: EndpointListener) -> None:
        """Tell `listener` about endpoints as they come and go while running (per-endpoint
        services such as KV-event subscribers hang off this). Endpoints present at `start()`
        are announced then; at `close()` all are announced removed."""
        self._listeners.append(listener)
        if self._running:
            for mp in self.router.pools.values():
                for ep in mp.pool:
                    listener.endpoint_added(mp.model, ep)

    def model_pool(self, model: str) -> ModelPool:
        mp = self.router.pools.get(model)
        if mp is None:
            raise ConfigError(f"no pool serves model {model!r}; pools: "
                              + ", ".join(self.router.pools))
        return mp

    def add_endpoint(self, model: str, endpoint: Endpoint) -> Endpoint:
        """Add (or update) an endpoint of `model`'s pool; starts its scraper when running.

        Returns the pool's endpoint object, which keeps its state if it was already known.
        """
        mp = self.model_pool(model)
        ep = mp.pool.add(endpoint)
        self._added.setdefault((model, ep.name), self.clock())
        self._start_scraper(model, ep)
        if self._running and ep is endpoint:  # a new endpoint, not an update
            if (precise := self._precise.get(model)) is not None:
                precise.add(ep)
            for listener in self._listeners:
                listener.endpoint_added(model, ep)
        log.info("endpoint %s added to pool %s", ep.name, model)
        return ep

    def remove_endpoint(self, model: str, name: str) -> Endpoint | None:
        """Drop endpoint `name` (`ip:port`) from `model`'s pool and stop scraping it.

        Requests already sent there finish normally; the scheduler forgets the endpoint.
        """
        mp = self.model_pool(model)
        ep = mp.pool.remove(name)
        self._added.pop((model, name), None)
        scraper = self._scrapers.pop((model, name), None)
        if scraper is not None:  # scrapers only exist while the loop runs
            asyncio.get_running_loop().create_task(scraper.stop())
        if ep is not None:
            mp.scheduler.on_endpoint_removed(ep)
            precise = self._precise.get(model)
            if precise is not None and self._running:
                task = asyncio.get_running_loop().create_task(precise.remove(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._running:
                for listener in self._listeners:
                    listener.endpoint_removed(model, ep)
            log.info("endpoint %s removed from pool %s", name, model)
        return ep

    def scraper(self, model: str, name: str) -> Scraper | None:
        return self._scrapers.get((model, name))

    def precise_routing(self, model: str) -> PreciseRouting | None:
        """The pool's tokenizer and KV-event subscribers (None without a precise scorer)."""
        return self._precise.get(model)

    def scrape_stats(self) -> Iterator[tuple[str, str, Scraper]]:
        """(pool, endpoint, scraper) of every endpoint scraped: attempts, failures, last error."""
        for (model, name), scraper in self._scrapers.items():
            yield model, name, scraper

    def kv_event_stats(self) -> Iterator[tuple[str, str, SubscriberStats]]:
        """(pool, endpoint, stats) of every KV-event subscriber: how far each has read."""
        for model, precise in self._precise.items():
            for manager in precise.managers:
                for name, sub in manager.subscribers.items():
                    yield model, name, sub.stats

    def prefix_shares(self) -> list[PrefixShare]:
        """The Redis shares of this replica (empty without `redis:`): one per shared prefix
        index (`index` set) and one per pool for in-flight load (`endpoints` set)."""
        return [] if self.sharing is None else list(self.sharing.shares)

    # ------------------------------------------------------------------ readiness

    def now(self) -> float:
        return self.clock()

    def is_ready(self, ep: Endpoint, now: float | None = None) -> bool:
        """Healthy and scraped successfully within the ready window (the core's rule)."""
        return self.router.rule.is_ready(ep, self.clock() if now is None else now)

    def ready_endpoints(self, mp: ModelPool, now: float | None = None, *,
                        prefer_fresh: bool = True) -> list[Endpoint]:
        """The endpoints of `mp` the scheduler may pick from right now: `Router.candidates`,
        the core's ready and live rule."""
        return self.router.candidates(mp, self.clock() if now is None else now,
                                      prefer_fresh=prefer_fresh)

    def set_starting(self, model: str, asked: Mapping[str, float]) -> None:
        """What discovery knows of `model`'s replicas (replacing its last report): when each
        was asked for, on this layer's clock, by name; a name of the pool's endpoints dates
        that endpoint, another is a replica starting outside the pool (a pod not ready yet)."""
        self._asked[model] = dict(asked)

    def starting(self, model: str, now: float | None = None) -> list[float]:
        """When each replica of `model`'s pool that does not serve yet was asked for (the
        autoscaling estimator counts it serving from its cold start's end): those discovery
        reports outside the pool, and the pool's endpoints not ready and never scraped
        successfully, dated by discovery or else by their first addition here."""
        t = self.clock() if now is None else now
        mp = self.model_pool(model)
        asked = self._asked.get(model, {})
        out = [at for name, at in asked.items() if mp.pool.get(name) is None]
        for ep in mp.pool:
            if ep.metrics.scraped_at is None and not self.is_ready(ep, t):
                out.append(asked.get(ep.name, self._added.get((model, ep.name), t)))
        return out

    def endpoints(self) -> Iterator[tuple[ModelPool, Endpoint]]:
        for mp in self.router.pools.values():
            for ep in mp.pool:
                yield mp, ep

    def ready_count(self, now: float | None = None) -> int:
        t = self.clock() if now is None else now
        return sum(1 for _, ep in self.endpoints() if self.is_ready(ep, t))

    async def wait_ready(self, timeout: float, poll: float = 0.02) -> bool:
        """Wait until at least one endpoint is ready; False after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.ready_count() == 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(poll)
        return True
