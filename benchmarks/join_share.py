"""What each replica of an autoscaled pool takes, and at what TTFT, window by window.

    python benchmarks/join_share.py [--policy inferoute] [--profile llama3-8b-h100]
                                    [--base 1] [--peak 16] [--duration 400] [--window 35]
                                    [--param input_len=6000 ...] [--seed 0]

One virtual run of `inferoute bench autoscale`'s gauge rule (bench/autoscale.py) on a day
load, by default engine B's day of docs/benchmark.md (random prompts of 4,200-7,800 tokens,
150 out). For every `--window` seconds it prints, per replica (named by the time it began to
serve), the requests the gateway dispatched to it and their mean TTFT. A fair policy gives a
replica that joins under load about the others' share at about their TTFT; a policy that
misreads a fresh replica's empty state floods it (docs/benchmark.md, "The prefill queue's
bound").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from statistics import fmean
from typing import Any

from inferoute.bench.autoscale import AutoscaleConfig, AutoscaledBench, ShapedLoad
from inferoute.bench.workloads import make_workload, parse_params
from inferoute.core.router import Decision

ENGINE_B = ["input_len=6000", "input_spread=0.3", "output_len=150"]


class _Dispatches:
    """A router listener: when and where each request went, and when its first token came."""

    def __init__(self) -> None:
        self.sent: dict[str, tuple[float, str]] = {}
        self.first: dict[str, float] = {}

    def dispatched(self, decision: Decision, now: float) -> None:
        if decision.endpoint is not None:
            self.sent[decision.request.request_id] = (now, decision.endpoint.name)

    def first_token(self, decision: Decision, now: float) -> None:
        self.first[decision.request.request_id] = now

    def finished(self, decision: Decision, now: float,
                 usage: dict[str, Any] | None = None) -> None:
        pass


def run(args: argparse.Namespace) -> list[str]:
    """The run's summary line, then one line per window."""
    workload = make_workload("random", parse_params(args.param or ENGINE_B), seed=args.seed)
    load = ShapedLoad.make(args.base, args.peak, args.duration, seed=args.seed, shape="day")
    bench = AutoscaledBench(AutoscaleConfig(rule="gauge", workload=workload, load=load,
                                            profile=args.profile, policy=args.policy,
                                            seed=args.seed,
                                            # the docs' figures: sized for the forecast itself
                                            rate_quantile=0.5))
    seen = _Dispatches()
    bench.bench.router.listeners.append(seen)
    result = bench.run()
    joined = {r.name: r.ready_at or 0.0 for r in bench.replicas if r.name is not None}
    lines = [f"{args.policy}: {result.row()}"]
    end = max((t for t, _ in seen.sent.values()), default=0.0)
    start = 0.0
    while start <= end:
        count: dict[str, int] = defaultdict(int)
        ttft: dict[str, list[float]] = defaultdict(list)
        for rid, (t, name) in seen.sent.items():
            if start <= t < start + args.window:
                count[name] += 1
                if rid in seen.first:
                    ttft[name].append(seen.first[rid] - t)
        cells = [f"joined {joined.get(name, 0.0):4.0f} s: {count[name]:3d} at "
                 f"{fmean(ttft[name]) if ttft[name] else 0.0:5.2f} s"
                 for name in sorted(count, key=lambda n: (joined.get(n, 0.0), n))]
        lines.append(f"{start:5.0f}-{start + args.window:<5.0f} " + " | ".join(cells))
        start += args.window
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="inferoute")
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--base", type=float, default=1.0)
    p.add_argument("--peak", type=float, default=16.0)
    p.add_argument("--duration", type=float, default=400.0)
    p.add_argument("--window", type=float, default=35.0, help="seconds per line (35)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help=f"random workload parameter (default: {' '.join(ENGINE_B)})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.window <= 0:
        p.error("--window must be positive")
    print("\n".join(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
