"""What one pool needs for precise prefix scoring, wired for the `DataLayer`.

`PreciseRouting.for_pool(plugins, kv_events, tokenizer)` returns None when the pool's scheduler
has no `precise-prefix-cache-scorer`; otherwise it attaches the pool's tokenizer to the scorers
and keeps one KV-event subscriber per endpoint feeding their index:

    routing = PreciseRouting.for_pool(scheduler.plugins.values(), pool.kv_events, pool.tokenizer)
    routing.add(endpoint)          # when an endpoint joins (inside the running loop)
    await routing.remove(name)     # when it leaves
    await routing.close()          # at shutdown

Pool configuration (YAML, next to `endpoints:` and `scheduler:`):

    kvEvents: {pubPort: 5557, replayPort: 5558}   # or pubPortOffset / replayPortOffset
    tokenizer: /models/Qwen3-32B                  # or {path, chatTemplate}, or "words"
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from ..core.endpoint import Endpoint
from ..core.errors import ConfigError
from ..core.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer, precise_scorers
from .kvevents import KVEventManager, KVEventsConfig
from .tokenize import RequestTokenizer, TokenizerConfig, load_tokenizer

log = logging.getLogger("inferoute.precise")


def _kv_config(value: Any) -> KVEventsConfig:
    if isinstance(value, KVEventsConfig):
        return value
    try:
        return KVEventsConfig.model_validate(value or {})
    except ValueError as exc:
        raise ConfigError(f"kvEvents: {exc}") from None


class PreciseRouting:
    """Tokenizer + KV-event subscribers of one pool's precise scorers."""

    def __init__(self, scorers: list[PrecisePrefixCacheScorer], kv_events: KVEventsConfig,
                 tokenizer: RequestTokenizer | None) -> None:
        self.scorers = scorers
        self.tokenizer = tokenizer
        self.managers = [KVEventManager(s.index, kv_events) for s in scorers]
        for s in scorers:
            s.set_tokenizer(tokenizer)

    @classmethod
    def for_pool(cls, plugins: Iterable[Any], kv_events: Any = None,
                 tokenizer: TokenizerConfig | str | dict[str, Any] | None = None,
                 ) -> "PreciseRouting | None":
        """None when no precise scorer is configured; ConfigError for a bad setting."""
        scorers = precise_scorers(plugins)
        if not scorers:
            return None
        tok = load_tokenizer(tokenizer) if tokenizer is not None else None
        if tok is None:
            log.warning("precise-prefix-cache-scorer without a pool 'tokenizer': requests that "
                        "arrive without token ids score 0")
        return cls(scorers, _kv_config(kv_events), tok)

    def add(self, ep: Endpoint) -> None:
        for m in self.managers:
            m.add(ep)

    async def remove(self, name: str) -> None:
        for m in self.managers:
            await m.remove(name)

    async def close(self) -> None:
        for m in self.managers:
            await m.close()
