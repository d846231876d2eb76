"""`inferoute epp`: the Envoy ext_proc endpoint picker.

    inferoute epp --model Qwen/Qwen3-32B --endpoint http://10.0.0.1:8000 --endpoint ...
    inferoute epp --config serving.yaml
    inferoute epp --pool-name qwen --pool-namespace default [--model Qwen/Qwen3-32B]
    inferoute epp --pool-name qwen --scheduler precise --tokenizer /models/qwen \
        --kv-events-pub-port 5557 --kv-events-replay-port 5558

Serves ext_proc on --grpc-port (9002), gRPC health on --health-port (9003) and Prometheus
metrics on --metrics-port (9090). Endpoints come from a static serving config (the same file
and flags as `inferoute serve`) or from a Kubernetes InferencePool and its ready pods.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from aiohttp import web

from ..aiotasks import stop_event_on_signals
from ..configfiles import load_admission_config
from ..core.admission import AdmissionConfig
from ..core.errors import ConfigError
from ..core.scheduling.config import parse_duration
from ..core.selection import CandidateSelector
from ..datalayer.admission_driver import AdmissionDriver
from ..datalayer.endpoint_health import EndpointHealth
from ..datalayer.precise_flags import add_precise_flags, apply_precise_flags
from ..datalayer.serving_config import (ServingConfig, apply_ops_args, config_from_args,
                                        parse_serving_config)
from ..datalayer.runtime import DataLayer
from ..datalayer.stale_fallback import StaleFallbackReport
from ..observability import Observability
from .health import GrpcHealth, start_health_server
from .metrics import MetricsObserver
from .protocol import MODE_NAMES, EndpointPicker, PickerSettings
from .server import ExternalProcessor, start_grpc_server, stop_servers

log = logging.getLogger("inferoute.extproc")


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any) -> None:
    p = sub.add_parser("epp", help="Envoy ext_proc endpoint picker (Gateway API Inference "
                       "Extension protocol)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("endpoints (one of)")
    src.add_argument("--config", metavar="FILE", help="serving config YAML (as for serve)")
    src.add_argument("--model", metavar="NAME", help="model served by the endpoints / pool")
    src.add_argument("--endpoint", metavar="URL", action="append", default=[],
                     help="model server http://host:port (repeat)")
    src.add_argument("--pool-name", metavar="NAME",
                     help="discover endpoints from this InferencePool (Kubernetes)")
    src.add_argument("--pool-namespace", metavar="NS", default=None,
                     help="namespace of the InferencePool (default: the pod's, else default)")
    p.add_argument("--scheduler", metavar="POLICY",
                   help="packaged policy name or EndpointPickerConfig file (default: inferoute; "
                        "llm-d: the llm-d guide's weights prefix 3, kv-cache 2, queue 2)")
    p.add_argument("--engine", choices=("auto", "vllm", "sglang", "trtllm"), default=None,
                   help="model server metrics dialect (default: auto)")
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--grpc-port", type=int, default=9002, help="ext_proc port (9002)")
    p.add_argument("--health-port", type=int, default=9003, help="gRPC health port (9003)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus port (9090)")
    p.add_argument("--scrape-interval", type=_duration_arg, default=None, metavar="DURATION",
                   help="model server /metrics poll period (default 50ms)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest request body accepted (413 beyond; default from config, 16 MiB)")
    p.add_argument("--fallbacks", type=int, default=0,
                   help="fallback endpoints appended to x-gateway-destination-endpoint "
                        "(default 0: ORIGINAL_DST clusters take one address)")
    p.add_argument("--body-mode", choices=sorted(MODE_NAMES), default="full-duplex",
                   help="ext_proc request body mode to assume when Envoy does not announce "
                        "it (default full-duplex, the reference set-up)")
    p.add_argument("--admission", metavar="FILE",
                   help="admission config YAML (docs/admission.md): saturation thresholds, "
                        "objectives (header x-gateway-inference-objective; negative priority "
                        "= sheddable, 429 while saturated), flow-control queue, model routes. "
                        "Default: saturationDetector of the scheduler config, queue on")
    p.add_argument("--redis", metavar="URL", default=None,
                   help="share prefix-index inserts and in-flight load with the other picker "
                        "replicas through this Redis (e.g. redis://redis:6379/0)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--autoscaling", metavar="YAML", default=None,
                   help="export inferoute_pool_desired_replicas for this TTFT target etc., "
                        "e.g. '{ttftTarget: 1s}' (docs/kubernetes.md)")
    add_precise_flags(p)
    p.set_defaults(func=main)


def _admission_config(args: argparse.Namespace, config: ServingConfig) -> AdmissionConfig:
    """The --admission file, else defaults with the scheduler config's saturation thresholds
    (where the reference picker's EndpointPickerConfig keeps them)."""
    if args.admission:
        return load_admission_config(args.admission)
    spec = config.pools[0].scheduler_config().saturation_detector
    return AdmissionConfig(saturation_detector=spec)


def _serving_config(args: argparse.Namespace) -> ServingConfig:
    """The static config, or for Kubernetes an empty pool the discovery fills; either way
    with the precise-scoring flags (--tokenizer, --kv-events-*) applied to its pools."""
    return apply_precise_flags(_base_config(args), args)


def _base_config(args: argparse.Namespace) -> ServingConfig:
    if args.pool_name:
        if args.config or args.endpoint:
            raise ConfigError("--pool-name discovers endpoints: do not combine it with "
                              "--config or --endpoint")
        data: dict[str, Any] = {"pools": [{"model": args.model or args.pool_name,
                                           "endpoints": [], "engine": args.engine or "auto",
                                           "scheduler": args.scheduler}]}
        if args.scrape_interval:
            data["scrapeInterval"] = args.scrape_interval
        if getattr(args, "redis", None):
            data["redis"] = args.redis
        apply_ops_args(data, args)
        return parse_serving_config(data, "the command line")
    ns = argparse.Namespace(config=args.config, model=args.model, endpoint=args.endpoint,
                            engine=args.engine, scheduler=args.scheduler, host=None, port=None,
                            scrape_interval=args.scrape_interval,
                            redis=getattr(args, "redis", None),
                            autoscaling=getattr(args, "autoscaling", None))
    return config_from_args(ns)


class EppApp:
    """The running picker: data layer, discovery, ext_proc, health and metrics servers."""

    def __init__(self, args: argparse.Namespace, config: ServingConfig,
                 admission: AdmissionConfig) -> None:
        self.args = args
        self.config = config
        self.data = DataLayer(config)
        self.obs = Observability()
        default_model = config.pools[0].model if args.pool_name else None
        settings = PickerSettings(
            max_body_bytes=args.max_body_bytes or config.max_body_bytes,
            fallbacks=max(0, args.fallbacks), assumed_mode=MODE_NAMES[args.body_mode])
        self.admission = AdmissionDriver(admission, self.data)
        # the flow-control gauges (queue by priority, bytes, reserved slots) as the gateway's
        self.obs.watch(self.data, self.admission.controller.queue_stats)
        # the gateway's endpoint health: what each replica serves (its /v1/models, read at
        # start, every few seconds and when a scrape names another model) and the answers
        # Envoy reports (429/503 back-pressure, 5xx outliers, a wrong-model 404) decide which
        # endpoints later picks may use; the all-stale fallback as in the gateway
        self.endpoint_health = EndpointHealth(self.data, config.health.outlier,
                                              config.health.active)
        selector = CandidateSelector(
            self.data.router, self.endpoint_health,
            stale_fallback=self.data.scrape, on_stale=StaleFallbackReport(self.obs.registry,
                                                                         "picker"))
        self.picker = EndpointPicker(self.data.router, settings, observer=MetricsObserver(self.obs),
                                     admission=self.admission.controller,
                                     rules=self.admission.rules, selector=selector,
                                     default_model=default_model)
        self.servicer = ExternalProcessor(self.picker, clock=self.data.clock,
                                          wait_ticket=self.admission.wait,
                                          after_stream=self.admission.pump)
        self.health = GrpcHealth()
        self.discovery: Any = None
        self.ports: dict[str, int] = {}
        self._grpc: Any = None
        self._health_server: Any = None
        self._metrics: web.AppRunner | None = None

    async def start(self) -> None:
        args = self.args
        await self.data.start()
        self.endpoint_health.start()
        self.admission.start()
        self._grpc, self.ports["grpc"] = await start_grpc_server(
            self.servicer, args.host, args.grpc_port)
        self._health_server, self.ports["health"] = await start_health_server(
            self.health, args.host, args.health_port)
        self.ports["metrics"] = await self._start_metrics(args.host, args.metrics_port)
        if args.pool_name:
            from ..datalayer.discovery.kubernetes import PoolDiscovery
            self.discovery = PoolDiscovery(self.data, self.config.pools[0].model,
                                           pool_name=args.pool_name,
                                           namespace=args.pool_namespace,
                                           on_synced=self.health.set_ready)
            await self.discovery.start()
        else:
            await self.health.set_ready(True)
        log.info("endpoint picker: ext_proc on :%d, health on :%d, metrics on :%d",
                 self.ports["grpc"], self.ports["health"], self.ports["metrics"])

    async def _start_metrics(self, host: str, port: int) -> int:
        async def metrics(_: web.Request) -> web.Response:
            body, ctype = self.obs.render()
            return web.Response(body=body, headers={"Content-Type": ctype})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._metrics = runner
        server = site._server  # the bound port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        return sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        await self.health.set_ready(False)
        await self.admission.close()
        await self.endpoint_health.close()
        if self.discovery is not None:
            await self.discovery.stop()
        servers = [s for s in (self._grpc, self._health_server) if s is not None]
        await stop_servers(*servers)
        if self._metrics is not None:
            await self._metrics.cleanup()
        await self.data.close()


async def _run(args: argparse.Namespace, config: ServingConfig,
               admission: AdmissionConfig) -> None:
    app = EppApp(args, config, admission)
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    stop = stop_event_on_signals()
    print(f"inferoute epp: ext_proc on {args.host}:{app.ports['grpc']}, health on "
          f":{app.ports['health']}, metrics on :{app.ports['metrics']}", flush=True)
    try:
        await stop.wait()
    finally:
        await app.stop()


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _serving_config(args)
        admission = _admission_config(args, config)
    except ConfigError as exc:
        print(f"inferoute epp: {exc}", file=sys.stderr)
        return 2
    from ..datalayer.discovery.kubernetes import PoolError
    try:
        asyncio.run(_run(args, config, admission))
    except ConfigError as exc:  # found while building the pools, e.g. a missing tokenizer
        print(f"inferoute epp: {exc}", file=sys.stderr)
        return 2
    except (OSError, PoolError) as exc:
        print(f"inferoute epp: {exc}", file=sys.stderr)
        return 1
    return 0
