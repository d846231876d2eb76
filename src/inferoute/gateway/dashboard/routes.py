"""The dashboard's routes and the JSON state it polls."""

from __future__ import annotations

import time
from dataclasses import asdict
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ...datalayer.runtime import DataLayer
from ...observability import Observability
from ..tenants import Tenants
from .feed import DashboardFeed

_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _ratio(hits: float | None, queries: float | None) -> float | None:
    return hits / queries if hits is not None and queries else None


def snapshot(data: DataLayer, obs: Observability, feed: DashboardFeed) -> dict[str, Any]:
    """Everything the page shows, at this instant."""
    now = data.now()
    pools = []
    for mp in data.router.pools.values():
        ready = [ep for ep in mp.pool if data.is_ready(ep, now)]
        replicas = []
        for ep in mp.pool:
            m = ep.metrics
            is_ready = ep in ready
            replicas.append({
                "endpoint": ep.name, "ready": is_ready, "healthy": ep.healthy,
                "health": "ready" if is_ready else ("ejected" if not ep.healthy else "stale"),
                "waiting": m.waiting, "running": m.running, "kv": m.kv_usage,
                "prefix_hit_rate": _ratio(m.prefix_cache_hits, m.prefix_cache_queries),
                "in_flight": ep.in_flight_requests,
                "scraped_ago": None if m.scraped_at is None else round(now - m.scraped_at, 3)})
        n = len(ready) or 1
        pool: dict[str, Any] = {
            "name": mp.model, "ready": len(ready), "replicas": replicas,
            "average_kv": sum(ep.metrics.kv_usage for ep in ready) / n,
            "average_queue": sum(ep.metrics.waiting for ep in ready) / n,
            "desired_replicas": None}
        if obs.autoscaler is not None:
            est = obs.autoscaler.estimate(mp.model, now, ready)
            pool["desired_replicas"] = est.desired
            pool["estimate"] = asdict(est)
        pools.append(pool)
    return {"time": time.time(), "pools": pools, "recent": feed.last(now),
            "series": feed.series(now), "models": data.router.model_names()}


def add_dashboard(app: web.Application, data: DataLayer, obs: Observability,
                  tenants: Tenants | None) -> DashboardFeed:
    """Register the routes and the feed (a router listener); returns the feed."""
    feed = DashboardFeed()
    data.router.listeners.append(feed)
    for mp in data.router.pools.values():  # the page shows each scorer's score
        mp.scheduler.record_scores = True
    static = resources.files(__package__) / "static"
    page = (static / "index.html").read_bytes()
    assets = {name: (static / name).read_bytes() for name in _STATIC}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=_STATIC[name], charset="utf-8")

    async def state(request: web.Request) -> web.Response:
        if tenants is not None:  # 401 in OpenAI form when the key is missing or unknown
            tenants.gate.store.authenticate(request.headers)
        return web.Response(body=orjson.dumps(snapshot(data, obs, feed)),
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/dashboard", index)
    app.router.add_get("/dashboard/state", state)
    app.router.add_get("/dashboard/static/{name}", asset)
    return feed
