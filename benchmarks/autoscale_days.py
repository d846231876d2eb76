"""The desired-replicas gauge on the twelve day loads of docs/benchmark.md, on more seeds.

    python benchmarks/autoscale_days.py [--seed-offset 0] [--loads "A day,B'"] [--jobs 2]
                                        [--rules gauge,kv --kv-targets 0.2,0.3,0.4]
                                        [--no-stream] [--rate-quantile 0.9]

Each load is one `inferoute bench autoscale` command of the docs' autoscaling section (engine
A: the command's defaults; engine B: llama3-8b-h100 with 6,000-token prompts; the four
held-out loads with their own workloads), run as `--rules gauge` and/or once per KV threshold
with the load's seed plus `--seed-offset`: offset 0 makes the docs' rows, and other offsets
draw other arrivals and prompts of the same day, to see whether a change holds beyond the
twelve seeds it was measured on. One line per load and rule (replica-seconds, TTFT p90,
requests over the 1-s target), then each rule's totals over the loads: one KV threshold for
every day, as an operator sets it, against the gauge. `--no-stream`: clients that ask for
whole answers (the gateway times no first token; the engine's TTFT is still what is scored).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

from inferoute.bench.autoscale import AutoscaleConfig, ShapedLoad, run_autoscaled
from inferoute.bench.autoscale_command import DEFAULT_PARAMS
from inferoute.bench.workloads import make_workload
from inferoute.core.autoscale import DEFAULT_RATE_QUANTILE

ENGINE_A = "qwen3-32b-2xh100"
ENGINE_B = "llama3-8b-h100"
B_PARAMS = {"input_len": 6000, "input_spread": 0.3, "output_len": 150}


class Day(NamedTuple):
    name: str
    profile: str
    params: dict[str, Any]
    base: float
    peak: float
    duration: float
    seed: int


#: the eight day loads and the four held out, as docs/benchmark.md's commands run them
DAYS = (
    Day("A day", ENGINE_A, {}, 1, 16, 600, 0),
    Day("B day", ENGINE_B, B_PARAMS, 1, 16, 400, 0),
    Day("A 3-12", ENGINE_A, {}, 3, 12, 600, 1),
    Day("B 2-8", ENGINE_B, B_PARAMS, 2, 8, 600, 2),
    Day("A 900 s", ENGINE_A, {}, 2, 10, 900, 3),
    Day("B 800 s", ENGINE_B, B_PARAMS, 1, 6, 800, 4),
    Day("A 4-14", ENGINE_A, {}, 4, 14, 500, 5),
    Day("B 3-12", ENGINE_B, B_PARAMS, 3, 12, 600, 6),
    Day("A''", ENGINE_A, {"input_len": 2500, "output_len": 400}, 1.5, 13, 650, 23),
    Day("B''", ENGINE_B, {"input_len": 4000, "input_spread": 0.4, "output_len": 250},
        1, 12, 650, 24),
    Day("B'", ENGINE_B, {"input_len": 3000, "input_spread": 0.5, "output_len": 300},
        2, 14, 700, 22),
    Day("A'", ENGINE_A, {"input_len": 2000, "output_len": 500}, 2, 11, 700, 21),
)


def run(job: tuple[Day, int, str, float, bool, float]
        ) -> tuple[str, str, float, float, int, int]:
    """One load under one rule ("gauge" or "kv T"): (load, rule, replica-seconds, TTFT p90,
    requests over the target, requests)."""
    day, offset, rule, warmup, stream, quantile = job
    seed = day.seed + offset
    workload = make_workload("random", {**DEFAULT_PARAMS, **day.params}, seed=seed)
    load = ShapedLoad.make(day.base, day.peak, day.duration, seed=seed, warmup=warmup)
    kind, _, target = rule.partition(" ")
    r = run_autoscaled(AutoscaleConfig(
        rule="kv" if kind == "kv" else "gauge", workload=workload, load=load,
        profile=day.profile, seed=seed, kv_target=float(target) if target else 0.5,
        scored_from=warmup, stream=stream, rate_quantile=quantile))
    return day.name, rule, r.replica_seconds, r.ttft_p90, r.over_target, r.requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed-offset", type=int, default=0,
                   help="added to every load's seed (0: the docs' rows)")
    p.add_argument("--loads", default="", help="comma-separated names (all)")
    p.add_argument("--rules", default="gauge", help="gauge, kv or gauge,kv (gauge)")
    p.add_argument("--kv-targets", default="0.3", help="--rules kv: thresholds (0.3)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds at each day's base rate first, not scored (0; `bench "
                        "autoscale --warmup`)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (2)")
    p.add_argument("--no-stream", action="store_true",
                   help="clients that ask for whole answers, not event streams")
    p.add_argument("--rate-quantile", type=float, default=DEFAULT_RATE_QUANTILE,
                   help="the gauge's `rateQuantile`: the quantile of its forecast rate it "
                        f"sizes for ({DEFAULT_RATE_QUANTILE:g})")
    args = p.parse_args(argv)
    names = {n.strip() for n in args.loads.split(",") if n.strip()}
    unknown = names - {d.name for d in DAYS}
    if unknown:
        p.error(f"unknown load(s) {', '.join(sorted(unknown))}; the loads: "
                f"{', '.join(d.name for d in DAYS)}")
    kinds = {k.strip() for k in args.rules.split(",") if k.strip()}
    if not kinds or kinds - {"gauge", "kv"}:
        p.error("--rules: gauge, kv or gauge,kv")
    try:
        targets = [float(t) for t in args.kv_targets.split(",") if t.strip()]
    except ValueError:
        targets = []
    if "kv" in kinds and (not targets or any(not 0 < t <= 1 for t in targets)):
        p.error("--kv-targets: a comma list of utilisations in (0, 1]")
    rules = (["gauge"] if "gauge" in kinds else []) + (
        [f"kv {t:g}" for t in targets] if "kv" in kinds else [])
    days = [d for d in DAYS if not names or d.name in names]
    if args.warmup < 0:
        p.error("--warmup: seconds, at least 0")
    if not 0 < args.rate_quantile < 1:
        p.error("--rate-quantile: a probability in (0, 1)")
    jobs = [(d, args.seed_offset, rule, args.warmup, not args.no_stream, args.rate_quantile)
            for rule in rules for d in days]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run, jobs))
    totals: dict[str, list[float]] = {}
    for name, rule, seconds, p90, n_over, n in results:
        total = totals.setdefault(rule, [0.0, 0.0, 0.0])
        total[0] += seconds
        total[1] += n_over
        total[2] += p90 <= 1.0
        print(f"{rule:8s} {name:8s} {seconds:7,.0f} replica-seconds  p90 {p90:6.3f} s  "
              f"{n_over:5d} of {n} over 1 s  {'meets' if p90 <= 1.0 else 'misses'}")
    print(f"\n| rule | replica-seconds | requests over 1 s | target met on (of {len(days)}) |")
    print("| --- | ---: | ---: | ---: |")
    for rule, (seconds, over, met) in totals.items():
        print(f"| {rule} | {seconds:,.0f} | {over:,.0f} | {met:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
