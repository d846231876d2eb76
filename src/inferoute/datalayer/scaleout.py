"""Scale-out wiring: what one gateway (or picker) replica shares with the others through Redis.

`DataLayer` uses this when the serving config names `redis:`. Per pool it shares

- every prefix index a scheduler plugin keeps (`prefix-cache-scorer`, the `inferoute`
  policy's predictive scorer, ...): routing inserts go to a Redis stream the other replicas
  apply, and a replica that starts late replays the capped stream;
- the precise scorer's *speculative* entries (its engine-confirmed blocks come from the KV
  events every replica consumes itself);
- the in-flight load: requests and prompt tokens per endpoint, added to each replica's counts.

One stream per (pool, plugin): `inferoute:prefix:{model}:{plugin}`; in-flight hashes
`inferoute:inflight:{model}:{replica}`. See `prefix_share` for the protocol.

    sharing = RedisSharing("redis://redis:6379/0", clock=time.monotonic)
    sharing.add_pool(model, share_indexes(scheduler.plugins), lambda: pool.endpoints())
    await sharing.start()      # in the running loop
    await sharing.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from ..core.endpoint import Endpoint
from ..core.kvindex import KVBlockIndex
from ..core.plugins.prefixindex import PrefixIndex
from .prefix_share import (
    PrefixShare,
    SharedKVIndex,
    SharedPrefixIndex,
    share_scorer_index,
)

log = logging.getLogger("inferoute.scaleout")

#: longer than `PrefixShare.block_ms` (200 ms, the reader's blocking XREAD), short enough
#: that a dead Redis is noticed quickly; the tasks retry on their own
SOCKET_TIMEOUT = 2.0


def share_indexes(plugins: Mapping[str, Any]) -> dict[str, SharedPrefixIndex | SharedKVIndex]:
    """Give every plugin that keeps a prefix index (approximate or precise) a shared one.

    Call before the scheduler routes anything and, for precise scorers, before their KV-event
    subscribers exist (`PreciseRouting.for_pool`): they feed `scorer.index`."""
    shared: dict[str, SharedPrefixIndex | SharedKVIndex] = {}
    for name, plugin in plugins.items():
        if isinstance(getattr(plugin, "index", None), (PrefixIndex, KVBlockIndex)):
            shared[name] = share_scorer_index(plugin)
    return shared


class RedisSharing:
    """The Redis client and the `PrefixShare` tasks of every pool of one replica."""

    def __init__(self, url: str, *, clock: Callable[[], float], **share_options: Any) -> None:
        self.url = url
        self.clock = clock
        self.share_options = share_options
        self.client: aioredis.Redis | None = None
        self.shares: list[PrefixShare] = []
        self._pools: list[tuple[str, dict[str, SharedPrefixIndex | SharedKVIndex],
                                Callable[[], Iterable[Endpoint]]]] = []

    def add_pool(self, model: str, indexes: dict[str, SharedPrefixIndex | SharedKVIndex],
                 endpoints: Callable[[], Iterable[Endpoint]]) -> None:
        self._pools.append((model, indexes, endpoints))

    async def start(self) -> None:
        """Connect lazily (a Redis that is down is retried, requests never wait for it)."""
        if self.client is not None:
            return
        self.client = aioredis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT,
                                        socket_connect_timeout=SOCKET_TIMEOUT)
        for model, indexes, endpoints in self._pools:
            # in-flight load once per pool; each shared index on its own stream
            self.shares.append(PrefixShare(self.client, model, None, endpoints,
                                           clock=self.clock, **self.share_options))
            for plugin, index in indexes.items():
                self.shares.append(PrefixShare(self.client, f"{model}:{plugin}", index,
                                               clock=self.clock, **self.share_options))
        for share in self.shares:
            await share.start()
        log.info("sharing %d prefix indexes and the in-flight load of %d pools through %s",
                 sum(len(i) for _, i, _ in self._pools), len(self._pools),
                 self.url.split("@")[-1])

    async def close(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.shares))
        self.shares.clear()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
