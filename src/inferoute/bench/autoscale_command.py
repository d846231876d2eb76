"""`inferoute bench autoscale`: the KV-utilisation HPA rule (a sweep of thresholds) against the
desired-replicas gauge, under one load shape (a day, a spike, a step) or a replayed trace, in
virtual time; a markdown table.

    inferoute bench autoscale --kv-targets 0.05,0.1,0.15,0.2,0.3 -o autoscale.json
    inferoute bench autoscale --trace AzureLLMInferenceTrace_conv.csv --kv-targets 0.2,0.4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ..core.autoscale import DEFAULT_RATE_QUANTILE
from .autoscale import (
    SHAPES,
    AutoscaleConfig,
    AutoscaleResult,
    ShapedLoad,
    run_autoscaled,
)
from .load import LoadSpec
from .traces import add_trace_arguments, trace_from_arguments
from .workloads import Workload, make_workload, parse_params

#: the table's default workload: unrelated 3000-token prompts (uniform 1500-4500), 300 output
#: tokens (150-450): prefill-bound, no prefix to share
DEFAULT_PARAMS = {"num_prompts": 4000, "input_len": 3000, "output_len": 300}
#: the load shape's flags (a trace replaces them; their defaults are in their help)
SHAPE_FLAGS = ("shape", "base", "peak", "duration")


def _load(args: argparse.Namespace) -> tuple[Workload, LoadSpec]:
    """The workload and load: the trace's, or the shape's over the synthetic workload."""
    if args.trace:
        given = [f"--{k}" for k in SHAPE_FLAGS if getattr(args, k) is not None] + (
            ["--workload"] if args.workload != "random" else []) + (
            ["--param"] if args.param else [])
        if given:
            raise ValueError("--trace replays the trace's own requests and times: no "
                             f"{', '.join(given)}")
        return trace_from_arguments(args)
    params = {**DEFAULT_PARAMS, **parse_params(args.param)} if args.workload == "random" \
        else parse_params(args.param)
    base, peak, duration = (d if v is None else float(v) for v, d in (
        (args.base, 1.0), (args.peak, 16.0), (args.duration, 600.0)))
    return make_workload(args.workload, params, seed=args.seed), ShapedLoad.make(
        base, peak, duration, seed=args.seed, shape=args.shape or "day", warmup=args.warmup)


def _configs(args: argparse.Namespace) -> list[AutoscaleConfig]:
    if args.warmup < 0:
        raise ValueError("--warmup: seconds, at least 0")
    workload, load = _load(args)
    common: dict[str, Any] = {
        "workload": workload, "load": load, "profile": args.profile, "policy": args.policy,
        "seed": args.seed, "ttft_target": args.ttft_target, "cold_start": args.cold_start,
        "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
        "scored_from": args.warmup, "stream": not args.no_stream,
        "profile_overrides": parse_params(args.engine, "engine override")}
    if not 0 < args.rate_quantile < 1:
        raise ValueError("--rate-quantile: a quantile in (0, 1)")
    targets = [float(t) for t in args.kv_targets.split(",") if t.strip()]
    if not targets or any(not 0 < t <= 1 for t in targets):
        raise ValueError("--kv-targets: a comma list of utilisations in (0, 1]")
    rules = {r.strip() for r in args.rules.split(",") if r.strip()}
    if not rules or rules - {"gauge", "kv"}:
        raise ValueError("--rules: gauge, kv or gauge,kv")
    gauge = AutoscaleConfig(rule="gauge", rate_quantile=args.rate_quantile, **common)
    return ([gauge] if "gauge" in rules else []) + (
        [AutoscaleConfig(rule="kv", kv_target=t, **common) for t in targets]
        if "kv" in rules else [])


def table(results: list[AutoscaleResult], ttft_target: float) -> str:
    """Markdown: one row per run, the cheapest KV threshold that meets the target marked, and
    how the gauge compares with it (the goal: meet the target with fewer replica-seconds);
    then, as the goal cannot be read where no rule meets the target, each rule at the
    other's cost: the fewest requests over the target of a KV threshold that used no more
    replica-seconds than the gauge, and the fewest replica-seconds of one with no more
    requests over."""
    kv = [r for r in results if r.rule == "kv"]
    meets = [r for r in kv if r.ttft_p90 <= ttft_target]
    best = min(meets, key=lambda r: r.replica_seconds) if meets else None
    lines = [("| rule | replica-seconds | peak replicas | TTFT p50 (s) | TTFT p90 (s) | "
              f"requests over {ttft_target:g} s | requests |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        name = ("desired-replicas gauge" if r.rule == "gauge"
                else f"KV utilisation {r.kv_target:g}" + (" (best)" if r is best else ""))
        lines.append(f"| {name} | {r.replica_seconds:,.0f} | {r.peak_replicas} | "
                     f"{r.ttft_p50:.3f} | {r.ttft_p90:.3f} | {_over(r)} | {r.requests} |")
    for g in (r for r in results if r.rule == "gauge"):
        verdict = "meets" if g.ttft_p90 <= ttft_target else "misses"
        if best is None:
            lines.append(f"\ngauge: {verdict} the target; " + (
                "no KV threshold of the sweep does" if kv else "no KV run to compare with"))
        else:
            edge = (" (the sweep's highest threshold: a higher one might be cheaper)"
                    if best.kv_target == max(r.kv_target or 0.0 for r in kv) else "")
            ratio = 100 * (g.replica_seconds / best.replica_seconds - 1)
            lines.append(f"\ngauge: {verdict} the target, {ratio:+.1f}% replica-seconds "
                         f"against the best KV threshold ({best.kv_target:g}){edge}")
        if kv:
            lines.append(_at_equal_cost(g, kv))
    return "\n".join(lines)


def _over(r: AutoscaleResult) -> str:
    return f"{r.over_target} ({100 * r.over_target / max(1, r.requests):.1f}%)"


def _at_equal_cost(g: AutoscaleResult, kv: list[AutoscaleResult]) -> str:
    """The KV sweep at the gauge's replica-seconds and at its requests over the target."""
    cheaper = min((r for r in kv if r.replica_seconds <= g.replica_seconds),
                  key=lambda r: (r.over_target, r.replica_seconds), default=None)
    fewer = min((r for r in kv if r.over_target <= g.over_target),
                key=lambda r: (r.replica_seconds, r.over_target), default=None)
    cost = f"{g.replica_seconds:,.0f}"
    at_cost = (f"with no more replica-seconds ({cost}), a KV threshold has at best "
               f"{_over(cheaper)} requests over (KV {cheaper.kv_target:g}; the gauge "
               f"{_over(g)})" if cheaper is not None
               else f"no KV threshold used as few replica-seconds ({cost})")
    at_over = (f"with no more requests over ({g.over_target}), a KV threshold used at best "
               f"{fewer.replica_seconds:,.0f} replica-seconds (KV {fewer.kv_target:g}, "
               f"{100 * (fewer.replica_seconds / g.replica_seconds - 1):+.1f}%)"
               if fewer is not None
               else f"no KV threshold had as few requests over ({g.over_target})")
    return f"at equal cost: {at_cost}; {at_over}"


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 4)


def cmd_autoscale(args: argparse.Namespace) -> int:
    configs = _configs(args)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_autoscaled, configs))
    else:
        results = []
        for cfg in configs:
            results.append(run_autoscaled(cfg))
            r = results[-1]
            print(f"{r.rule} {r.kv_target or ''}: {r.wall_seconds:.0f} s wall", file=sys.stderr)
    print(table(results, args.ttft_target))
    if args.output:
        report = {"args": {k: v for k, v in vars(args).items() if k != "func"},
                  "runs": [{**r.row(), "timeline": [
                      {"t": s.t, "replicas": s.asked, "ready": s.ready,
                       "metric": _num(s.metric), "forecast": _num(s.forecast),
                       "rate": _num(s.rate), "rate_ahead": _num(s.rate_ahead)}
                      for s in r.timeline]} for r in results]}
        Path(args.output).write_text(json.dumps(report, indent=1))
        print(f"report written to {args.output}", file=sys.stderr)
    return 0


def register(sub: Any, guard: Any) -> None:
    """Add `bench autoscale` to the bench subcommands."""
    p = sub.add_parser("autoscale", help="HPA on KV utilisation vs the desired-replicas gauge "
                                         "under a rising and falling load (virtual time)")
    p.add_argument("--kv-targets", default="0.05,0.1,0.15,0.2,0.3",
                   help="KV-utilisation thresholds of the seed's rule to sweep")
    p.add_argument("--rules", default="gauge,kv",
                   help="which rules run: gauge, kv or both (gauge,kv); the runs are "
                        "deterministic, so two invocations make the same table as one")
    p.add_argument("--ttft-target", type=float, default=1.0, help="seconds (1.0)")
    p.add_argument("--base", type=float, default=None, help="lowest arrival rate, req/s (1)")
    p.add_argument("--peak", type=float, default=None, help="highest arrival rate, req/s (16)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of the load (600)")
    p.add_argument("--shape", choices=SHAPES, default=None,
                   help="day: base -> peak -> base (a cosine); spike: peak from 30%% to 50%% "
                        "of the duration; step: peak from 25%% on (day)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds at the base rate before the shape, not scored: the pool "
                        "starts the day from the night's steady state, not from one "
                        "replica; with --trace, the replay's first seconds (0)")
    p.add_argument("--cold-start", type=float, default=60.0,
                   help="seconds from a replica asked for to serving (60)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--rate-quantile", type=float, default=DEFAULT_RATE_QUANTILE,
                   help="gauge: the quantile of its forecast rate it sizes for "
                        f"({DEFAULT_RATE_QUANTILE:g}: its one-sided 90%% bound; 0.5: the "
                        "forecast itself)")
    p.add_argument("--max-replicas", type=int, default=16)
    p.add_argument("--profile", default="qwen3-32b-2xh100", help="engine profile")
    p.add_argument("--policy", default="inferoute", help="routing policy (inferoute)")
    p.add_argument("--workload", default="random",
                   help="random (3000-token prompts, 300 out) | shared_prefix | mixed | ...")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="workload parameter, repeatable")
    p.add_argument("--engine", action="append", default=[], metavar="NAME=VALUE",
                   help="engine profile override, repeatable (e.g. max_model_len=131072)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stream", action="store_true",
                   help="clients that ask for whole answers, not event streams: the gateway "
                        "times no first token (TTFT is still scored at the engine's)")
    add_trace_arguments(p)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1)")
    p.add_argument("-o", "--output", default=None, help="JSON report with the timelines")
    p.set_defaults(func=guard(cmd_autoscale))
