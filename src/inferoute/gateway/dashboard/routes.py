"""The dashboard's routes and the JSON state it polls."""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ...core.errors import Forbidden, Unauthorized
from ...datalayer.runtime import DataLayer
from ...observability import Observability, pool_thrash
from ..tenants import Tenants
from .feed import DashboardFeed
from .sessions import COOKIE, DashboardSessions, Session

_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _ratio(hits: float | None, queries: float | None) -> float | None:
    return hits / queries if hits is not None and queries else None


def snapshot(data: DataLayer, obs: Observability, feed: DashboardFeed) -> dict[str, Any]:
    """Everything the page shows, at this instant."""
    now = data.now()
    queues = obs.queue_stats()
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
            "desired_replicas": None, "admission": None, "kv_fit": None}
        thrash = pool_thrash(mp.scheduler)
        if thrash is not None:  # the KV-fit release: holding, and the recompute share
            pool["kv_fit"] = {"holding": thrash[0], "recompute_share": thrash[1]}
        if queues is not None:  # admission on: the gateway's own queue and reserve
            st = queues.get(mp.model)
            pool["admission"] = {
                "queued": st.requests if st else 0,
                "queued_by_priority": {str(p): n for p, n in st.by_priority.items()}
                if st else {},
                "reserved_slots": st.reserved if st else 0,
                "top_priority_requests": st.top_arrivals if st else 0,
                "top_priority_without_free_slot": st.top_without_slot if st else 0}
        if obs.autoscaler is not None:
            est = obs.autoscaler.estimate(mp.model, now, ready, data.starting(mp.model, now))
            pool["desired_replicas"] = est.desired
            pool["estimate"] = asdict(est)
        pools.append(pool)
    return {"time": time.time(), "pools": pools, "recent": feed.last(now),
            "series": feed.series(now), "models": data.router.model_names()}


def _same_origin(request: web.Request) -> None:
    """Forbidden (403) for a browser post from another site (SameSite=Strict already keeps
    the cookie off it; this also covers the login form, which has no cookie yet)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden("the dashboard takes posts from its own page only",
                        code="cross_origin_post")


def add_dashboard(app: web.Application, data: DataLayer, obs: Observability,
                  tenants: Tenants | None,
                  chat: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
                  ) -> DashboardFeed:
    """Register the routes and the feed (a router listener); returns the feed. `chat` is the
    gateway's `/v1/chat/completions` handler, which the page's chat box reaches through
    `/dashboard/chat`."""
    feed = DashboardFeed()
    data.router.listeners.append(feed)
    for mp in data.router.pools.values():  # the page shows each scorer's score
        mp.scheduler.record_scores = True
    static = resources.files(__package__) / "static"
    page = (static / "index.html").read_bytes()
    login_page = (static / "login.html").read_text("utf-8")
    assets = {name: (static / name).read_bytes() for name in _STATIC}
    sessions = (DashboardSessions(tenants.gate.store, time.monotonic)
                if tenants is not None else None)

    def signed_in(request: web.Request) -> Session | None:
        return sessions.lookup(request.cookies) if sessions is not None else None

    def require_session(request: web.Request) -> Session | None:
        """The request's session; Unauthorized (401, JSON) without one when tenants are on."""
        session = signed_in(request)
        if sessions is not None and session is None:
            raise Unauthorized("sign in at /dashboard first", code="missing_api_key")
        return session

    def sign_in(status: int, message: str = "") -> web.Response:
        note = f'<p class="error" id="login-error">{html.escape(message)}</p>' if message else ""
        return web.Response(text=login_page.replace("<!--message-->", note), status=status,
                            content_type="text/html", headers={"Cache-Control": "no-store"})

    async def index(request: web.Request) -> web.Response:
        if sessions is not None and signed_in(request) is None:
            return sign_in(401)  # the sign-in form, not the page
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def login(request: web.Request) -> web.Response:
        _same_origin(request)
        if sessions is None:  # nothing to sign in to
            return web.Response(status=303, headers={"Location": "/dashboard"})
        form = await request.post()
        key = form.get("key")
        try:
            token = sessions.login(key if isinstance(key, str) else "")
        except Unauthorized:
            return sign_in(401, "That key was not accepted.")
        resp = web.Response(status=303, headers={"Location": "/dashboard",
                                                 "Cache-Control": "no-store"})
        resp.set_cookie(COOKIE, token, path="/dashboard", max_age=int(sessions.ttl),
                        httponly=True, samesite="Strict", secure=request.secure or None)
        return resp

    async def logout(request: web.Request) -> web.Response:
        _same_origin(request)
        if sessions is not None:
            sessions.logout(request.cookies)
        resp = web.Response(status=303, headers={"Location": "/dashboard"})
        resp.del_cookie(COOKIE, path="/dashboard")
        return resp

    async def asset(request: web.Request) -> web.Response:
        require_session(request)
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=_STATIC[name], charset="utf-8")

    async def state(request: web.Request) -> web.Response:
        session = signed_in(request)
        if tenants is not None and session is None:  # else the API's own bearer-key check
            tenants.gate.store.authenticate(request.headers)
        body = snapshot(data, obs, feed)
        body["signed_in_as"] = session.tenant.name if session is not None else None
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/dashboard", index)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/state", state)
    app.router.add_get("/dashboard/static/{name}", asset)
    if chat is not None:
        relay_to = chat

        async def chat_relay(request: web.Request) -> web.StreamResponse:
            """The chat box's post, handed to the gateway's chat handler as a call with the
            session's key (the cookie stays here): the API's key check runs unchanged."""
            _same_origin(request)
            session = require_session(request)
            headers = CIMultiDict((k, v) for k, v in request.headers.items()
                                  if k.lower() not in ("cookie", "authorization", "x-api-key"))
            if session is not None:
                headers["Authorization"] = f"Bearer {session.key}"
            return await relay_to(request.clone(rel_url="/v1/chat/completions", headers=headers))

        app.router.add_post("/dashboard/chat", chat_relay)
    return feed
