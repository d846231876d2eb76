"""`inferoute sim`: serve N simulated vLLM replicas from one process; `sim calibrate`.

    inferoute sim --model Qwen/Qwen3-32B --port 8000 --replicas 8 --profile qwen3-32b-2xh100

Replica i listens on port P+i. With --kv-events, replica i publishes KV events on
--kv-events-port + i (default 5557 + i) and answers replay requests on --kv-replay-port + i
(default 5657 + i); with --kv-events-connect ADDR every replica's PUB connects to ADDR instead
(the subscriber binds, vLLM's `endpoint` without a `*`). When every listener is up the command prints one line starting with
"serving" (scripts wait for it) and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..aiotasks import stop_event_on_signals
from ..core.errors import ConfigError

READY_PREFIX = "serving"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be in [0, 1]")
    return value


def register(subparsers: Any) -> None:
    """Add `sim` (serve) and `sim calibrate`."""
    p = subparsers.add_parser(
        "sim", help="serve simulated vLLM replicas (OpenAI API, /metrics, KV events)",
        description="Serve N simulated vLLM replicas on ports P..P+N-1 from one process.")
    p.add_argument("--model", help="served model name (required to serve)")
    p.add_argument("--port", type=int, default=8000, help="port of the first replica (8000)")
    p.add_argument("--replicas", type=int, default=1, help="number of replicas (1)")
    p.add_argument("--profile", default="qwen3-32b-2xh100",
                   help="engine profile: packaged name (qwen3-32b-2xh100, llama3-8b-h100, tiny) "
                        "or a YAML path (qwen3-32b-2xh100)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of output text and noise (0)")
    p.add_argument("--time-scale", type=_positive_float, default=1.0,
                   help="wall seconds per simulated second (1.0; 2 = a GPU twice as slow)")
    p.add_argument("--max-loras", type=int, default=None,
                   help="LoRA GPU slots; enables the LoRA endpoints (profile default)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME",
                   help="LoRA adapter loaded at start (repeatable; enables LoRA)")
    p.add_argument("--no-prompt-tokens-details", action="store_true",
                   help="usage without prompt_tokens_details.cached_tokens, as vLLM answers "
                        "unless started with --enable-prompt-tokens-details")
    p.add_argument("--kv-events", action="store_true", help="publish vLLM KV events over ZMQ")
    p.add_argument("--kv-events-port", type=int, default=5557,
                   help="PUB port of replica 0, +i for replica i (5557)")
    p.add_argument("--kv-events-connect", metavar="ADDR", default=None,
                   help="connect every replica's PUB socket to ADDR (e.g. tcp://127.0.0.1:5557, "
                        "where a subscriber binds) instead of binding --kv-events-port; topics "
                        "kv@HOST:PORT@MODEL tell the replicas apart")
    p.add_argument("--kv-replay-port", type=int, default=None,
                   help="replay ROUTER port of replica 0, +i for replica i "
                        "(kv-events-port + 100)")
    p.add_argument("--fault-rate", type=_rate, default=0.0,
                   help="fraction of requests that fail (0)")
    p.add_argument("--fault-kinds", default="500",
                   help="comma-separated fault kinds: 429,500,503,drop,slow (500)")
    p.add_argument("--slow-delay", type=float, default=1.0,
                   help="extra seconds before a 'slow' request starts (1.0)")
    p.set_defaults(func=run_sim)
    # optional: `inferoute sim --model m` serves; `inferoute sim calibrate` is another command
    sub = p.add_subparsers(dest="sim_command", metavar="[SUBCOMMAND]")
    c = sub.add_parser("calibrate", help="print the calibration report of a profile")
    c.add_argument("--profile", dest="calibrate_profile", default="qwen3-32b-2xh100",
                   help="profile name or YAML path (qwen3-32b-2xh100)")
    c.add_argument("--steps", type=int, default=2000,
                   help="engine steps timed for the speed line (2000)")
    c.add_argument("--no-speed", action="store_true", help="skip timing the engine itself")
    c.add_argument("--from", dest="from_url", metavar="URL", action="append",
                   help="measure the OpenAI/vLLM server at URL and write a fitted profile "
                        "(the model's shape from --model-config, else from --profile); once "
                        "per replica of a fleet sharing one host: all measured at once")
    c.add_argument("--model-config", metavar="PATH",
                   help="with --from: the model's Hugging Face config.json (or its directory)")
    c.add_argument("--served-model", metavar="NAME",
                   help="with --from: model to request (default: the first /v1/models lists)")
    c.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="with --from: the server's token budget per step (2048, vLLM CPU)")
    c.add_argument("--max-num-seqs", type=int, default=128,
                   help="with --from: the server's sequence limit (128, vLLM CPU)")
    c.add_argument("--lengths", metavar="N,N,...",
                   help="with --from: prompt lengths of the prefill ladder")
    c.add_argument("--batches", metavar="N,N,...", help="with --from: decode batch sizes (1,2,4,8)")
    c.add_argument("--repeats", type=int, default=3, help="with --from: runs per prompt length (3)")
    c.add_argument("--decode-tokens", type=int, default=64,
                   help="with --from: output tokens per decode stream (64)")
    c.add_argument("--name", help="with --from: the profile's name (fitted-MODEL)")
    c.add_argument("-o", "--output", help="with --from: write the profile YAML here")
    c.set_defaults(func=run_calibrate)
    b = sub.add_parser("bench-live",
                       help="measure how closely one simulator process keeps real-time token "
                            "timing (N replicas, C concurrent streams)")
    b.add_argument("--replicas", type=int, default=8, help="replicas in the process (8)")
    b.add_argument("--concurrency", type=int, default=100, help="concurrent streams (100)")
    b.add_argument("--profile", dest="bench_profile", default="qwen3-32b-2xh100",
                   help="engine profile (qwen3-32b-2xh100)")
    b.add_argument("--time-scale", dest="bench_time_scale", type=_positive_float, default=1.0,
                   help="simulator time scale (1.0)")
    b.add_argument("--prompt-words", type=int, default=500, help="prompt length in tokens (500)")
    b.add_argument("--output-tokens", type=int, default=100, help="tokens per response (100)")
    b.add_argument("--duration", type=_positive_float, default=20.0,
                   help="seconds of load (20)")
    b.set_defaults(func=run_bench_live)


def run_bench_live(args: argparse.Namespace) -> int:
    """`inferoute sim bench-live`."""
    from .livebench import run_bench_live as run
    return run(args)


def run_calibrate(args: argparse.Namespace) -> int:
    """`inferoute sim calibrate --profile NAME`, or `--from URL` to fit a profile."""
    if args.from_url:
        from .calibrate_from import run_calibrate_from
        return run_calibrate_from(args)
    from .calibrate import main_calibrate
    args.profile = args.calibrate_profile
    return int(main_calibrate(args) or 0)


def build_configs(args: argparse.Namespace) -> list[Any]:
    """Replica configurations from the command line; ConfigError on bad flags."""
    from .faults import FaultInjector
    from .profile import load_profile
    from .server import ReplicaConfig
    if not args.model:
        raise ConfigError("--model is required")
    if args.replicas < 1:
        raise ConfigError("--replicas must be >= 1")
    if not 0 < args.port <= 65535 or args.port + args.replicas - 1 > 65535:
        raise ConfigError("--port: the replicas' ports must lie in 1..65535")
    profile = load_profile(args.profile)
    lora_enabled = args.max_loras is not None or bool(args.lora)
    if args.max_loras is not None:
        if args.max_loras < 1:
            raise ConfigError("--max-loras must be >= 1")
        profile = profile.replace(max_loras=args.max_loras)
    if lora_enabled and profile.max_loras < 1:
        raise ConfigError(f"profile {profile.name} has no LoRA slots; pass --max-loras K")
    if len(set(args.lora)) != len(args.lora) or args.model in args.lora:
        raise ConfigError("--lora names must be distinct and differ from --model")
    faults = FaultInjector()
    try:
        faults.update({"rate": args.fault_rate, "kinds": args.fault_kinds,
                       "slow_delay": args.slow_delay})
    except Exception as exc:  # BadRequest from the shared validator
        raise ConfigError(f"fault flags: {exc}") from None
    replay = args.kv_replay_port
    if replay is None:
        replay = args.kv_events_port + 100 if args.kv_events_port else 0
    return [ReplicaConfig(index=i, host=args.host, port=args.port + i, model=args.model,
                          profile=profile, seed=args.seed, time_scale=args.time_scale,
                          lora_enabled=lora_enabled, loras=list(args.lora),
                          kv_events=args.kv_events,
                          kv_pub_port=args.kv_events_port + i if args.kv_events_port else 0,
                          kv_connect=args.kv_events_connect,
                          kv_replay_port=replay + i if replay else 0,
                          faults=faults.settings,
                          prompt_tokens_details=not args.no_prompt_tokens_details)
            for i in range(args.replicas)]


async def serve(configs: list[Any], stop: asyncio.Event | None = None) -> None:
    """Run the replicas until `stop` is set (or SIGINT/SIGTERM)."""
    from .server import Replica
    stop = stop_event_on_signals(stop)
    replicas = [Replica(c) for c in configs]
    started: list[Any] = []
    try:
        for r in replicas:
            await r.start()
            started.append(r)
        first, last = configs[0], configs[-1]
        ports = str(first.port) if len(configs) == 1 else f"{first.port}-{last.port}"
        print(f"{READY_PREFIX} {len(configs)} replica{'s' if len(configs) != 1 else ''} of "
              f"{first.model} on {first.host}:{ports} (profile {first.profile.name}, "
              f"time scale {first.time_scale:g})", flush=True)
        for r in replicas:
            if r.publisher is not None:
                print(f"  {r.name}: kv events {r.publisher.pub_endpoint} topic "
                      f"{r.publisher.topic} replay {r.publisher.replay_endpoint}", flush=True)
        await stop.wait()
    finally:
        for r in reversed(started):
            await r.stop()


def run_sim(args: argparse.Namespace) -> int:
    """`inferoute sim ...`: serve until interrupted."""
    import zmq
    try:
        configs = build_configs(args)
    except ConfigError as exc:
        print(f"inferoute sim: error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve(configs))
    except (OSError, zmq.ZMQError) as exc:
        print(f"inferoute sim: error: {exc}", file=sys.stderr)
        return 1
    print("inferoute sim: stopped", flush=True)
    return 0
