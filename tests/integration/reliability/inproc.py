"""In-process model servers and gateways on 127.0.0.1 for the fast reliability tests.

`Replica` is the stand-in model server (`inferoute.tools.standin.StandIn`) whose behaviour
a test switches (`status`: answer every request with that status; `body`/`ctype`: what such
an answer carries; `model`: the model it serves). `start_gateway` runs the real `serve()` in
front of replicas on this test's event loop, waits until every replica is ready and returns a
`Gateway`; `stop_gateways` ends them. Everything speaks real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.gateway.app import serve
from inferoute.tools.standin import StandIn

ROUND_ROBIN = {"plugins": [{"type": "round-robin-picker"}],
               "schedulingProfiles": [{"name": "default",
                                       "plugins": [{"pluginRef": "round-robin-picker"}]}],
               "saturationDetector": {"metricsStalenessThreshold": "2s"}}


#: the context length the replicas report and enforce
MAX_MODEL_LEN = 4096


class Replica:
    """A stand-in model server with switchable faults; counts the requests it got."""

    def __init__(self, model: str = "m") -> None:
        self.standin = StandIn(model)
        self.status: int | None = None
        self.body: bytes = b'{"error": {"message": "injected", "type": "server_error"}}'
        self.ctype = "application/json"
        self.headers: dict[str, str] = {}  # extra headers of a `status` answer
        self.models_status = 200  # what GET /v1/models answers
        self.metrics_frozen = asyncio.Event()  # set: /metrics answers; clear: it hangs
        self.metrics_frozen.set()
        self.hits = 0
        self.seen_headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.seen_headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.status is not None:
            await request.read()
            return web.Response(status=self.status, body=self.body,
                                headers={"Content-Type": self.ctype, **self.headers})
        body = orjson.loads(await request.read())
        model = body.get("model")
        asked = [body.get(k) for k in ("max_tokens", "max_completion_tokens",
                                       "max_output_tokens")]
        if any(isinstance(n, int) and n > MAX_MODEL_LEN for n in asked):  # as vLLM refuses it
            return web.json_response({"error": {
                "message": f"This model's maximum context length is {MAX_MODEL_LEN} tokens.",
                "type": "BadRequestError", "param": None, "code": 400}}, status=400)
        if model != self.standin.model:  # as vLLM answers a model it does not serve
            return web.json_response({"error": {
                "message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                "param": None, "code": 404}}, status=404)
        return await self.standin.generate(request)

    async def metrics(self, request: web.Request) -> web.Response:
        await self.metrics_frozen.wait()
        return await self.standin.metrics(request)

    async def models(self, request: web.Request) -> web.Response:
        if self.models_status != 200:
            return web.Response(status=self.models_status, text="no")
        return web.json_response({"object": "list", "data": [
            {"id": self.standin.model, "object": "model", "max_model_len": MAX_MODEL_LEN}]})

    async def start(self) -> "Replica":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/responses"):
            app.router.add_post(path, self.generate)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.standin.health)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    async def close(self) -> None:
        self.metrics_frozen.set()
        if self.runner is not None:
            await self.runner.cleanup()


class Gateway:
    """A running in-process gateway: its URL, a client session and its stop event."""

    def __init__(self, url: str, session: aiohttp.ClientSession, task: asyncio.Task[None],
                 stop: asyncio.Event) -> None:
        self.url = url
        self.session = session
        self.task = task
        self.stop = stop

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, self.url + path, json=json, data=data,
                                        headers=headers) as r:
            return r.status, dict(r.headers), await r.read()

    async def complete(self, **extra: Any) -> tuple[int, dict[str, str], bytes]:
        body = {"model": "m", "prompt": "hello", "max_tokens": 3, **extra}
        return await self.call("POST", "/v1/completions", json=body)

    async def metric(self, name: str, **labels: str) -> float:
        _, _, page = await self.call("GET", "/metrics")
        total = 0.0
        for line in page.decode().splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") and all(
                    f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def close(self) -> None:
        self.stop.set()
        await self.task
        await self.session.close()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # serve() installed them on this loop
            loop.remove_signal_handler(sig)


async def start_gateway(replicas: list[Replica], tmp_path: Path, *, ready: int | None = None,
                        model: str = "m", **overrides: Any) -> Gateway:
    """`serve()` with `replicas` in one round-robin pool of `model`; returns once `ready`
    replicas (default all) are ready."""
    cfg: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "scrapeTimeout": "500ms", "readyWindow": "30s",
        "pools": [{"model": model, "endpoints": [r.url for r in replicas],
                   "scheduler": ROUND_ROBIN}]}
    cfg.update(overrides)
    config = parse_serving_config(cfg)
    ready_file = tmp_path / f"ready-{id(cfg)}"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, ready_file=str(ready_file), stop=stop))
    while not (ready_file.exists() and ready_file.read_text()):
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                    auto_decompress=False)
    gw = Gateway(f"http://127.0.0.1:{int(ready_file.read_text())}", session, task, stop)
    want = len(replicas) if ready is None else ready
    while True:
        status, _, body = await gw.call("GET", "/ready")
        if want == 0 or (status == 200 and sum(orjson.loads(body)["ready_endpoints"].values())
                         >= want):
            return gw
        await asyncio.sleep(0.02)
