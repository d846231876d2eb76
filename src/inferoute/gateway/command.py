"""`inferoute serve` (the gateway) and `inferoute overhead` (its latency benchmark)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any, Coroutine

from ..core.errors import ConfigError
from ..core.scheduling.config import parse_duration

if TYPE_CHECKING:
    from ..datalayer.discovery.static import ServingConfig


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on uvloop when installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Unix
        return asyncio.run(coro)
    return uvloop.run(coro)


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: `--kv-events-*` flag (argparse dest) -> `kvEvents:` key (KVEventsConfig alias)
_KV_EVENT_FLAGS = {"kv_events_pub_port": "pubPort", "kv_events_replay_port": "replayPort",
                   "kv_events_pub_port_offset": "pubPortOffset",
                   "kv_events_replay_port_offset": "replayPortOffset"}


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


def add_precise_flags(p: argparse.ArgumentParser) -> None:
    """The precise-scoring pool settings as flags (`inferoute serve` and `inferoute epp`)."""
    g = p.add_argument_group(
        "precise prefix scoring (scheduler 'precise'; pool keys tokenizer/kvEvents, "
        "docs/precise-routing.md; with --config they replace those keys in every pool)")
    g.add_argument("--tokenizer", metavar="PATH|words",
                   help="the model's tokenizer: a local tokenizer.json or Hugging Face "
                        "tokenizer directory (nothing is downloaded), or 'words' for "
                        "`inferoute sim`")
    g.add_argument("--kv-events-pub-port", type=_port_arg, metavar="N",
                   help="port of each endpoint's KV-event PUB socket, on the endpoint's host "
                        "(default 5557, vLLM's)")
    g.add_argument("--kv-events-replay-port", type=_port_arg, metavar="N",
                   help="port of each endpoint's KV-event replay socket (default 5558; 0: "
                        "none, no gap filling)")
    g.add_argument("--kv-events-pub-port-offset", type=int, metavar="N",
                   help="PUB port = the endpoint's HTTP port + N instead (several replicas "
                        "per host; `inferoute sim --port 8000 --kv-events`: -2443)")
    g.add_argument("--kv-events-replay-port-offset", type=int, metavar="N",
                   help="replay port = the endpoint's HTTP port + N (`inferoute sim`: -2343)")


def apply_precise_flags(config: ServingConfig, args: argparse.Namespace) -> ServingConfig:
    """`config` with every pool's `tokenizer:` / `kvEvents:` set from the flags of
    `add_precise_flags` (kvEvents keys merged over the pool's own); unchanged without them.

    ConfigError when they are given but no pool's scheduler has a precise-prefix-cache-scorer
    (they would be ignored silently otherwise)."""
    from ..core.plugins.precise import PrecisePrefixCacheScorer
    from ..datalayer.discovery.static import parse_serving_config
    from ..datalayer.kvevents import KVEventsConfig

    tokenizer = getattr(args, "tokenizer", None)
    kv: dict[str, Any] = {}
    for dest, key in _KV_EVENT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            kv[key] = None if key == "replayPort" and value == 0 else value
    if tokenizer is None and not kv:
        return config
    if kv.get("pubPort") == 0:
        raise ConfigError("--kv-events-pub-port must be 1-65535")
    precise = PrecisePrefixCacheScorer.type_name
    if not any(spec.type == precise for pc in config.pools
               for spec in pc.scheduler_config().plugins):
        raise ConfigError("--tokenizer and --kv-events-* configure precise prefix scoring: "
                          "use them with a scheduler that has a precise-prefix-cache-scorer "
                          "(e.g. --scheduler precise)")
    data = config.model_dump(by_alias=False)
    for pool in data["pools"]:
        if tokenizer is not None:
            pool["tokenizer"] = tokenizer
        if kv:
            own = pool.get("kv_events") or {}
            own = KVEventsConfig.model_validate(own).model_dump(by_alias=True,
                                                                 exclude_unset=True)
            pool["kv_events"] = {**own, **kv}
    return parse_serving_config(data, "the --tokenizer/--kv-events-* flags")


def _serve(args: argparse.Namespace) -> int:
    from ..datalayer.discovery.static import config_from_args
    from .app import serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = apply_precise_flags(config_from_args(args), args)
        run_async(serve(config, ready_file=args.ready_file, access_log=args.access_log))
    except ConfigError as exc:  # also tenants and semantic files, read at start-up
        print(f"inferoute serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"inferoute serve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _overhead(args: argparse.Namespace) -> int:
    from .overhead import main

    return main(args)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve", help="run the OpenAI-compatible gateway in front of model servers",
        description="Run the gateway: one OpenAI-compatible endpoint in front of model-server "
                    "replicas, routing each request to the replica that serves it fastest.")
    p.add_argument("--config", metavar="FILE", help="serving config YAML (pools, endpoints, "
                   "schedulers, timeouts); see docs/gateway.md")
    p.add_argument("--model", metavar="NAME", help="model name clients send (one pool)")
    p.add_argument("--endpoint", metavar="URL", action="append",
                   help="model server base URL, e.g. http://10.0.0.1:8000 (repeat)")
    p.add_argument("--engine", choices=("auto", "vllm", "sglang", "trtllm"), default=None,
                   help="metric names to scrape (default: detect)")
    p.add_argument("--scheduler", metavar="NAME_OR_PATH",
                   help="packaged policy (llm-d, round-robin, ...) or EndpointPickerConfig "
                        "file; with --config, applies to every pool")
    p.add_argument("--admission", metavar="FILE",
                   help="admission control YAML (objectives, flow control, model routes; "
                        "see docs/admission.md); off when not given")
    p.add_argument("--tenants", metavar="FILE",
                   help="API keys and per-tenant limits (YAML); default $INFEROUTE_API_KEYS, "
                        "else no authentication")
    p.add_argument("--redis", metavar="URL",
                   help="share rate limits, prefix-index inserts and in-flight load with "
                        "other gateway replicas through this Redis")
    p.add_argument("--semantic", metavar="FILE",
                   help='semantic routing config ("model": "auto", guards, semantic cache; '
                        "see docs/semantic.md); off when not given")
    p.add_argument("--host", default=None, help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 8080)")
    p.add_argument("--scrape-interval", type=_duration_arg, default=None, metavar="DURATION",
                   help="metrics scrape period per endpoint (default 50ms)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    p.add_argument("--access-log", action="store_true",
                   help="log one line per request (client, request line, status, bytes, "
                        "seconds, served endpoint)")
    p.add_argument("--ready-file", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--autoscaling", metavar="YAML", default=None,
                   help="export inferoute_pool_desired_replicas for this TTFT target etc., "
                        "e.g. '{ttftTarget: 1s}' (docs/kubernetes.md)")
    p.add_argument("--dashboard", action="store_true",
                   help="serve the live page at /dashboard (read-only; behind the API keys "
                        "when tenants are on)")
    add_precise_flags(p)
    p.set_defaults(func=_serve)

    o = sub.add_parser(
        "overhead", help="measure the latency the gateway adds and the scheduling decision time",
        description="Start a stand-in model server and the gateway in front of it, send "
                    "requests at a fixed rate alternately direct and through the gateway, and "
                    "print both latency distributions; then time scheduling decisions for an "
                    "8k-token prompt with 16 endpoints.")
    o.add_argument("--rate", type=float, default=200.0, help="gateway requests/s (the same "
                   "number again goes direct, interleaved; default 200)")
    o.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    o.add_argument("--scheduler", default=None, help="policy for the gateway (default llm-d "
                   "default config)")
    o.add_argument("--prompt-chars", type=int, default=2000,
                   help="prompt size of the measured requests (default 2000 chars)")
    o.add_argument("--skip-decision", action="store_true",
                   help="do not run the scheduling-decision benchmark")
    o.set_defaults(func=_overhead)
