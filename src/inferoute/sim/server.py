"""The simulator's HTTP shell: one aiohttp application per simulated vLLM replica.

A `Replica` owns an Engine, the EngineRunner that drives it in real time, its Prometheus
registry, its optional KV-event publisher and its fault injector, and serves vLLM's OpenAI API
on one port. Every response names the replica in the `x-inferoute-sim-replica` header.

Routes: POST /v1/completions, /v1/chat/completions, /v1/responses, /tokenize, /detokenize,
/v1/completions/render, /v1/chat/completions/render, /v1/load_lora_adapter,
/v1/unload_lora_adapter, /reset_prefix_cache; GET /v1/models, /health, /metrics; admin:
GET|POST /admin/faults, GET|POST /admin/latency, GET /admin/stats, GET /admin/timings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import orjson
import xxhash
from aiohttp import web

from ..core.errors import BadRequest
from . import tokenize_api, tokenizer
from .engine import Engine, SimRequest
from .faults import FaultInjector, FaultSettings
from .kvevents import KVEventPublisher, topic_for
from .metrics import CONTENT_TYPE, ReplicaMetrics
from .exchange import Exchange
from .openai_api import Kind, check_context, error_body, model_card, parse_sim_request
from .profile import EngineProfile
from .runner import EngineRunner

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-inferoute-sim-replica"
#: largest request body accepted (a 32k-word prompt is well under 1 MiB)
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class ReplicaConfig:
    """How to run one replica."""

    index: int
    host: str
    port: int
    model: str
    profile: EngineProfile
    seed: int = 0
    time_scale: float = 1.0
    lora_enabled: bool = False
    loras: list[str] = field(default_factory=list)
    kv_events: bool = False
    kv_pub_port: int = 0
    #: connect the PUB socket here (a subscriber binds) instead of binding kv_pub_port
    kv_connect: str | None = None
    kv_replay_port: int | None = None
    faults: FaultSettings = field(default_factory=FaultSettings)
    #: usage carries `prompt_tokens_details.cached_tokens` (vLLM's
    #: `--enable-prompt-tokens-details`; off in vLLM by default)
    prompt_tokens_details: bool = True


def _advertised_host(host: str) -> str:
    """The address a KV-event topic names: the listen address, or for a wildcard bind the
    pod IP (`POD_IP`) or this host's address."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    if os.environ.get("POD_IP"):
        return os.environ["POD_IP"]
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, *, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=error_body(status, message, param=param), status=status,
                        content_type="application/json", headers=headers)


def _request_id(request: web.Request) -> str:
    """The client's `X-Request-Id`, else a fresh one (as vLLM names rendered requests)."""
    return request.headers.get("X-Request-Id") or uuid.uuid4().hex


class Replica:
    """One simulated vLLM server."""

    def __init__(self, cfg: ReplicaConfig) -> None:
        self.cfg = cfg
        self.name = f"sim-{cfg.index}@{cfg.host}:{cfg.port}"
        self.profile = cfg.profile
        self.engine = Engine(cfg.profile, seed=cfg.seed, name=f"{cfg.host}:{cfg.port}",
                             kv_events=cfg.kv_events)
        self.metrics = ReplicaMetrics(cfg.model, self.engine.stats,
                                      block_size=cfg.profile.block_size,
                                      num_gpu_blocks=int(cfg.profile.num_blocks or 0),
                                      max_model_len=cfg.profile.max_model_len,
                                      lora_enabled=cfg.lora_enabled,
                                      gpu_memory_utilization=cfg.profile.gpu_memory_utilization)
        self.publisher: KVEventPublisher | None = None
        if cfg.kv_events:
            self.publisher = KVEventPublisher(
                host=cfg.host, pub_port=cfg.kv_pub_port, replay_port=cfg.kv_replay_port,
                topic=topic_for(_advertised_host(cfg.host), cfg.port, cfg.model),
                connect=cfg.kv_connect)
        self.runner: EngineRunner | None = None
        self.faults = FaultInjector(cfg.faults, seed=cfg.seed + cfg.index)
        self.extra_ttft = 0.0
        self.created = int(time.time())
        self.adapters: dict[str, str] = {}
        for name in cfg.loras:
            self._load_adapter(name, f"/sim/loras/{name}")
        self.app = self._build_app()
        self._app_runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(self._name_response)
        r = app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/responses", self.responses)
        r.add_post("/tokenize", self.tokenize)
        r.add_post("/detokenize", self.detokenize)
        r.add_post("/v1/completions/render", self.render_completion)
        r.add_post("/v1/chat/completions/render", self.render_chat)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics_handler)
        r.add_post("/v1/load_lora_adapter", self.load_lora_adapter)
        r.add_post("/v1/unload_lora_adapter", self.unload_lora_adapter)
        r.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        r.add_route("*", "/admin/faults", self.admin_faults)
        r.add_route("*", "/admin/latency", self.admin_latency)
        r.add_get("/admin/stats", self.admin_stats)
        r.add_get("/admin/timings", self.admin_timings)
        return app

    async def _name_response(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[REPLICA_HEADER] = self.name

    async def start(self) -> None:
        """Start the engine loop, the KV-event sockets and the HTTP listener."""
        self.runner = EngineRunner(self.engine, time_scale=self.cfg.time_scale,
                                   metrics=self.metrics, kv_events=self.cfg.kv_events,
                                   publish=self.publisher.publish if self.publisher else None)
        self.runner.start()
        if self.publisher is not None:
            self.publisher.start()
        self._app_runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, self.cfg.host, self.cfg.port, backlog=1024)
        await site.start()

    async def stop(self) -> None:
        if self._app_runner is not None:
            await self._app_runner.cleanup()
        if self.runner is not None:
            await self.runner.stop()
        if self.publisher is not None:
            await self.publisher.close()

    # -- small endpoints ---------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        self.engine.scraped()
        cost = self.engine.profile.scrape_engine_ms
        if cost:
            # the page of a server that renders it on the engine's cores takes that long
            scale = self.runner.time_scale if self.runner else self.cfg.time_scale
            await asyncio.sleep(cost / 1e3 * scale)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        limit = self.engine.max_model_len
        cards = [model_card(self.cfg.model, self.cfg.model, None, limit, self.created)]
        cards += [model_card(name, path, self.cfg.model, limit, self.created)
                  for name, path in self.adapters.items()]
        return _json({"object": "list", "data": cards})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """vLLM's POST /reset_prefix_cache: forget every cached block (AllBlocksCleared)."""
        if not self.engine.reset_prefix_cache():
            return _error(503, "cannot reset the prefix cache while requests hold KV blocks")
        if self.publisher is not None:
            self.publisher.publish(self.engine.drain_kv_events())
        return web.Response(status=200)

    # -- tokenizer and render -----------------------------------------------------------------

    def _unknown_model(self, model: str | None) -> web.Response | None:
        """vLLM's 404 for a model this replica does not serve (None: omitted, the base model)."""
        if model is None or model == self.cfg.model or model in self.adapters:
            return None
        return _error(404, f"The model `{model}` does not exist.", param="model")

    async def _tokenizer_call(self, request: web.Request,
                              call: Callable[[bytes], tuple[str | None, Any]]) -> web.Response:
        try:
            model, out = call(await request.read())
        except BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        return self._unknown_model(model) or _json(out)

    async def tokenize(self, request: web.Request) -> web.Response:
        limit = self.engine.max_model_len
        return await self._tokenizer_call(request, lambda raw: tokenize_api.tokenize(raw, limit))

    async def detokenize(self, request: web.Request) -> web.Response:
        return await self._tokenizer_call(request, tokenize_api.detokenize)

    async def render_completion(self, request: web.Request) -> web.Response:
        rid, limit = _request_id(request), self.engine.max_model_len
        return await self._tokenizer_call(
            request, lambda raw: tokenize_api.render_completion(raw, rid, limit))

    async def render_chat(self, request: web.Request) -> web.Response:
        rid, limit = _request_id(request), self.engine.max_model_len
        return await self._tokenizer_call(
            request, lambda raw: tokenize_api.render_chat(raw, rid, limit))

    # -- LoRA --------------------------------------------------------------------------------

    def _load_adapter(self, name: str, path: str) -> None:
        self.engine.load_lora(name)
        self.adapters[name] = path

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        return body

    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except BadRequest as exc:
            return _error(400, exc.message)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not self.cfg.lora_enabled:
            return _error(400, "LoRA is not enabled on this server "
                               "(start the simulator with --max-loras K)")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.adapters or name == self.cfg.model:
            return _error(400, f"The lora adapter '{name}' has already been loaded.")
        self._load_adapter(name, path)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except BadRequest as exc:
            return _error(400, exc.message)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.adapters:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        self.engine.unload_lora(name)
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # -- admin -------------------------------------------------------------------------------

    async def admin_faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                self.faults.update(await self._json_body(request))
            except BadRequest as exc:
                return _error(400, exc.message, param=exc.param)
        elif request.method != "GET":
            return _error(405, "use GET or POST")
        return _json(self.faults.settings.to_dict())

    async def admin_latency(self, request: web.Request) -> web.Response:
        assert self.runner is not None
        if request.method == "POST":
            try:
                body = await self._json_body(request)
                unknown = set(body) - {"time_scale", "extra_ttft"}
                if unknown:
                    raise BadRequest(f"unknown latency setting(s): {', '.join(sorted(unknown))}")
                for key, zero_ok in (("time_scale", False), ("extra_ttft", True)):
                    v = body.get(key)
                    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                          or v < 0 or (v == 0 and not zero_ok)):
                        kind = "non-negative" if zero_ok else "positive"
                        raise BadRequest(f"'{key}' must be a {kind} number", param=key)
            except BadRequest as exc:
                return _error(400, exc.message, param=exc.param)
            if body.get("time_scale") is not None:
                self.runner.time_scale = float(body["time_scale"])
            if body.get("extra_ttft") is not None:
                self.extra_ttft = float(body["extra_ttft"])
        elif request.method != "GET":
            return _error(405, "use GET or POST")
        return _json({"time_scale": self.runner.time_scale, "extra_ttft": self.extra_ttft})

    async def admin_stats(self, request: web.Request) -> web.Response:
        assert self.runner is not None
        st = self.engine.stats()
        return _json({"replica": self.name, "runner": self.runner.stats.to_dict(),
                      "engine": {"running": st.running, "waiting": st.waiting,
                                 "kv_usage": st.kv_usage},
                      "kv_events": None if self.publisher is None else {
                          "published": self.publisher.published,
                          "dropped": self.publisher.dropped}})

    async def admin_timings(self, request: web.Request) -> web.Response:
        assert self.runner is not None
        return _json(self.runner.timings())

    # -- inference ---------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completions")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "responses")

    async def _serve(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        assert self.runner is not None
        arrival = asyncio.get_running_loop().time()
        try:
            api = parse_sim_request(kind, await request.read())
        except BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        missing = self._unknown_model(api.model)
        if missing is not None:
            return missing
        lora = api.model if api.model != self.cfg.model else None
        ids = api.prompt_token_ids if api.prompt_token_ids is not None \
            else tokenizer.encode(api.prompt_text)
        if not ids:
            return _error(400, "The prompt must contain at least one token.", param="prompt")
        try:
            max_tokens = check_context(self.engine.max_model_len, len(ids), api.max_tokens)
        except BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        try:
            fault = self.faults.draw(request.headers)
        except BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        if fault in ("429", "500", "503"):
            status = int(fault)
            headers = {"Retry-After": str(self.faults.settings.retry_after)} \
                if status == 429 else None
            return _error(status, f"injected fault: HTTP {status}", headers=headers)
        # the profile's front end (a fitted one: the real server's HTTP, tokenizer and first
        # token path, far slower than this process's own), then any injected delay
        delay = (self.engine.front_end(len(ids)) * self.runner.time_scale
                 + self.extra_ttft + (self.faults.settings.slow_delay if fault == "slow" else 0.0))
        rid = uuid.uuid4().hex
        key = xxhash.xxh64_hexdigest(api.prompt_text.encode() if api.prompt_token_ids is None
                                     else orjson.dumps(ids))
        sim = SimRequest(request_id=rid, prompt_tokens=ids, max_tokens=max_tokens, lora=lora,
                         ignore_eos=api.ignore_eos, output_key=key)
        exchange = Exchange(self.runner, api, rid, key, arrival, seed=self.cfg.seed,
                            drop_after=self.faults.settings.drop_after_tokens
                            if fault == "drop" else None,
                            token_details=self.cfg.prompt_tokens_details)
        try:
            if api.stream:
                return await exchange.stream(request, sim, delay)
            return await exchange.complete(request, sim, delay)
        except BadRequest as exc:   # the engine refused it (it re-checks the limits)
            return _error(400, exc.message, param=exc.param)
