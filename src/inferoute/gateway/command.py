"""`inferoute serve`: the gateway."""

from __future__ import annotations

import argparse
import logging
import sys

from ..aiotasks import run_async
from ..core.errors import ConfigError
from ..core.scheduling.config import parse_duration
from ..datalayer.precise_flags import add_precise_flags, apply_precise_flags


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from ..datalayer.serving_config import config_from_args
    from . import redact
    from .app import serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install()  # credentials out of every log line, whoever writes it
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


def register(sub: argparse._SubParsersAction) -> None:
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
                   help="packaged policy (default: inferoute; llm-d, round-robin, ...) or "
                        "EndpointPickerConfig file; with --config, applies to every pool")
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
                   help="metrics scrape period per endpoint while its load matters "
                        "(default 50ms)")
    p.add_argument("--scrape-idle-interval", type=_duration_arg, default=None,
                   metavar="DURATION",
                   help="scrape period of an idle endpoint, or of every endpoint when no "
                        "plugin reads load metrics (default 1s; docs/gateway.md)")
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
