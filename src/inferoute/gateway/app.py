"""The aiohttp application of `inferoute serve` and the code that runs it.

Routes: `POST /v1/completions`, `/v1/chat/completions`, `/v1/responses` (proxied, see
`proxy.py`), `GET /v1/models` (every name of every pool, OpenAI list format), `GET /health`
(the process is up), `GET /ready` (503 until at least one endpoint is ready), `GET /metrics`
(Prometheus) and, when enabled, `GET /dashboard` (`dashboard/`). Every error, including unknown
routes and wrong methods, is an OpenAI-style JSON body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from ..aiotasks import stop_event_on_signals
from ..core.errors import InferouteError, NoEndpointAvailable
from ..core.request import API_PATHS
from ..datalayer.admission_driver import AdmissionDriver
from ..datalayer.serving_config import ServingConfig
from ..datalayer.runtime import DataLayer
from ..observability import Observability
from ..datalayer.endpoint_health import EndpointHealth
from .httperrors import ConnectionBounds, GatewayRunner, error_body, raise_open_file_limit
from .semantic import Semantic
from .tenants import Tenants
from .proxy import Proxy
from .redact import RedactingAccessLogger

log = logging.getLogger("inferoute.gateway")

#: open files kept back from client connections (upstream connections, scrapers, logs)
FILES_RESERVED = 256

DATA_KEY = web.AppKey("data", DataLayer)
OBS_KEY = web.AppKey("obs", Observability)


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    """An OpenAI-style JSON error; a 5xx says `server_error`, not the client's mistake."""
    return web.Response(body=error_body(status, message), status=status,
                        content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, f"{request.method} {request.path}: {exc.reason}")
    except InferouteError as exc:
        return web.Response(body=orjson.dumps(exc.to_dict()), status=exc.status,
                            content_type="application/json", headers=exc.headers or None)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:  # a bug: logged here with its traceback, a plain 500 for the client
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error in the gateway")


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp does it; any other expectation a JSON 417 (aiohttp's
    own answer is text/plain, sent before any middleware runs)."""
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() == "100-continue":
        if request.version == aiohttp.HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None
    resp = _error(417, f"unsupported Expect header {expect[:40]!r}; only 100-continue is")
    resp.force_close()  # the client may be holding its body back: do not read it
    return resp


def build_app(data: DataLayer, obs: Observability | None = None) -> web.Application:
    """The gateway application; the data layer is started and closed with the app."""
    config = data.config
    obs = obs or Observability()
    obs.watch(data)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_json_errors])
    app[DATA_KEY] = data
    app[OBS_KEY] = obs
    admission = AdmissionDriver.for_gateway(config.admission_config(), data)
    if admission is not None:
        obs.watch(data, admission.controller.queue_stats)
    outliers = EndpointHealth(data, config.health.outlier, config.health.active)
    tenants = Tenants.from_config(config.tenants, config.redis)
    semantic = None
    if config.semantic:
        served = set(data.router.model_names())
        if admission is not None:
            served |= set(admission.rules.client_models())
        semantic = Semantic(config.semantic, obs.registry, served)
    proxy = Proxy(data, obs, config, admission, outliers, tenants, semantic)
    created = int(time.time())

    async def models(request: web.Request) -> web.Response:
        items = []
        for mp in data.router.pools.values():
            for name in (mp.model, *mp.aliases, *mp.lora_adapters):
                items.append({"id": name, "object": "model", "created": created,
                              "owned_by": "inferoute", "root": mp.model,
                              "parent": mp.model if name in mp.lora_adapters else None})
        extra = list(admission.rules.client_models()) if admission is not None else []
        if semantic is not None:
            extra += sorted(semantic.router.auto_names)
        for name in extra:
            items.append({"id": name, "object": "model", "created": created,
                          "owned_by": "inferoute", "root": name, "parent": None})
        return _json({"object": "list", "data": items})

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        now = data.now()
        pools = {mp.model: len(data.ready_endpoints(mp, now, prefer_fresh=False))
                 for mp in data.router.pools.values()}
        # endpoints out for a reason someone must fix (a replica serving another model)
        problems = {name: p for name in pools if (p := outliers.problems(name))}
        extra = {"problems": problems} if problems else {}
        if any(pools.values()):
            return _json({"status": "ready", "ready_endpoints": pools, **extra})
        err = NoEndpointAvailable("no endpoint is ready yet" + (
            ": " + "; ".join(p for ps in problems.values() for p in ps[:3]) if problems
            else "")).to_dict()
        err["ready_endpoints"] = pools
        err.update(extra)
        return _json(err, status=503)

    async def metrics(request: web.Request) -> web.Response:
        body, ctype = obs.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    for path in API_PATHS:
        app.router.add_post(path, proxy.handle, expect_handler=_expect)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    if config.dashboard:
        from .dashboard import add_dashboard
        add_dashboard(app, data, obs, tenants, proxy.handle)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await data.start()
        outliers.start()
        if admission is not None:
            admission.start()
        yield
        await outliers.close()
        if tenants is not None:
            await tenants.close()
        await data.close()
        proxy.close()

    async def drain_queue(app: web.Application) -> None:
        # runs when shutdown starts, before in-flight requests are awaited: waiting requests
        # get their 503 at once instead of holding the shutdown up
        if admission is not None:
            await admission.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain_queue)
    return app


async def serve(config: ServingConfig, *, ready_file: str | None = None,
                stop: asyncio.Event | None = None, access_log: bool = False) -> None:
    """Run the gateway until SIGINT/SIGTERM (or `stop` is set).

    Shutdown is graceful: the listener closes, queued requests get 503, and requests in
    flight (streams included) may finish for up to `drainTimeout` seconds.
    """
    data = DataLayer(config)
    app = build_app(data)
    limits = config.connections
    # every connection is a file; the rest (upstream, scrapers, logs) needs some too
    nofile = raise_open_file_limit(limits.max_connections + FILES_RESERVED)
    max_connections = max(1, min(limits.max_connections, nofile - FILES_RESERVED))
    if max_connections < limits.max_connections:
        log.warning("open-file limit %d: at most %d client connections (maxConnections %d)",
                    nofile, max_connections, limits.max_connections)
    # handler_cancellation: a client that hangs up cancels its handler, which aborts upstream
    runner = GatewayRunner(  # JSON errors for requests aiohttp rejects
        app, bounds=ConnectionBounds(max_connections, limits.header_timeout),
        keepalive_timeout=limits.keep_alive_timeout,
        handler_cancellation=True, shutdown_timeout=config.drain_timeout,
        max_line_size=config.max_header_bytes, max_field_size=config.max_header_bytes,
        access_log=logging.getLogger("inferoute.access") if access_log else None,
        access_log_class=RedactingAccessLogger,  # no key in a query string reaches the log
        access_log_format='%a "%r" %s %b %Tf "%{x-gateway-destination-endpoint-served}o"')
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()  # stop the scrapers and close the session first
        raise
    addresses = runner.addresses
    port = addresses[0][1] if addresses else config.port
    log.info("inferoute gateway listening on http://%s:%d (%d pools, %d endpoints)%s",
             config.host, port, len(data.router.pools), sum(1 for _ in data.endpoints()),
             "; on every interface (--host 127.0.0.1 keeps it local)"
             if config.host in ("0.0.0.0", "::") else "")
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write(str(port))
    stop = stop_event_on_signals(stop)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
