"""Semantic routing in `inferoute serve`: `"model": "auto"`, content guards, semantic cache.

On when the serving config names a semantic config (`semantic: FILE` or `--semantic FILE`);
the router itself is `inferoute.semantic` (docs/semantic.md). Per request, after
authentication and before model routes and scheduling: a blocked request gets its 400, a cache
hit is answered without a model server, otherwise the outcome rewrites the request (target
model, system prompt, reasoning fields). Successful replies are offered to the cache.
"""

from __future__ import annotations

import time
from typing import Any, Collection

from aiohttp import web

from ..core.request import InferenceRequest


class Semantic:
    """Wraps a `SemanticRouter` with what the proxy needs."""

    def __init__(self, path: str, registry: Any, available: Collection[str]) -> None:
        from ..semantic import SemanticRouter, load_config  # heavy: only when configured

        self.router = SemanticRouter.from_config(load_config(path), registry=registry)
        self.available = set(available)

    def route(self, ireq: InferenceRequest, tenant: str | None, now: float
              ) -> tuple[web.Response | None, dict[str, str]]:
        """(a cached answer to send, or None to go on; headers for the response).

        Raises the outcome's InferouteError (400) for a blocked request. Otherwise applies the
        outcome to `ireq` (target model, body, prefix text)."""
        outcome = self.router.route(ireq, tenant, now=now, available=self.available)
        if outcome.blocked is not None:
            raise outcome.blocked
        if outcome.cached is not None:
            hit = outcome.cached_response(ireq, created=int(time.time()))
            return web.Response(status=200, body=hit.body, headers=hit.headers), {}
        outcome.apply_to_request(ireq)
        return None, dict(outcome.headers)

    def collector(self, ireq: InferenceRequest) -> Any:
        """A `StreamCollector` for a streaming request's relayed bytes."""
        from ..semantic import StreamCollector

        return StreamCollector(ireq.api)

    def store(self, ireq: InferenceRequest, tenant: str | None, reply: Any) -> None:
        """Offer a finished 2xx reply (parsed JSON body or `collector.reply()`)."""
        if reply is not None:
            self.router.store(ireq, tenant, reply)
