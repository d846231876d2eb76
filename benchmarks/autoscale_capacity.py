"""A fixed pool at steady loads: what it holds, and what the desired-replicas gauge says it needs.

    python benchmarks/autoscale_capacity.py [--profile llama3-8b-h100] [--replicas 4]
                                            [--rates 13.5,15,16.5,18] [--duration 300]
                                            [--param input_len=6000 ...] [--seed 0]

One virtual run per rate of `inferoute bench autoscale`'s set-up (bench/autoscale.py) with the
HPA held at `--replicas` (min = max), Poisson arrivals at the rate for `--duration` seconds. For
each it prints the TTFT p90 and the requests over the 1-s target, next to the gauge's estimate
30 s before the load ends (the forecast rate, the work per request, the decode step's cost,
N_ttft and N_kv): where the pool's cliff is, and whether the gauge's queueing model puts it
there (docs/benchmark.md, "Autoscaling").
"""

from __future__ import annotations

import argparse
import sys

from inferoute.bench.autoscale import AutoscaleConfig, AutoscaledBench, ShapedLoad
from inferoute.bench.autoscale_command import DEFAULT_PARAMS
from inferoute.bench.workloads import make_workload, parse_params

#: engine B's workload in docs/benchmark.md (the default profile's)
ENGINE_B = ["input_len=6000", "input_spread=0.3", "output_len=150"]


def run(profile: str, replicas: int, rate: float, duration: float, params: list[str],
        seed: int) -> str:
    """One steady run: its TTFT figures and the gauge's estimate near its end."""
    workload = make_workload("random", {**DEFAULT_PARAMS, **parse_params(params)}, seed=seed)
    load = ShapedLoad.make(rate, rate, duration, seed=seed)
    bench = AutoscaledBench(AutoscaleConfig(
        rule="gauge", workload=workload, load=load, profile=profile, seed=seed,
        min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas,
        rate_quantile=0.5))  # the docs' figures: the model at the forecast itself
    ends: list[str] = []

    def note(now: float) -> None:
        assert bench.estimator is not None
        est = bench.estimator.estimate(bench.cfg.model, now, bench._serving())
        step = "-" if est.decode_step is None else f"{est.decode_step * 1e3:.3f} ms"
        ends.append(f"forecast {est.arrival_rate:.2f} req/s, work {est.work:.3f} s, decode "
                    f"step {step}, N_ttft {est.ttft_replicas:.2f}, N_kv {est.kv_replicas:.2f}")

    bench.bench.call_at(duration - 30, note)
    r = bench.run()
    share = 100 * r.over_target / max(1, r.requests)
    return (f"{replicas} x {profile} at {rate:g} req/s: TTFT p90 {r.ttft_p90:.3f} s, "
            f"{r.over_target} of {r.requests} over 1 s ({share:.1f}%); gauge at "
            f"{duration - 30:g} s: {ends[0] if ends else '-'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--rates", default="13.5,15,16.5,18", help="req/s, comma-separated")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help=f"random workload parameter (default: {' '.join(ENGINE_B)} on "
                        "llama3-8b-h100, the command's defaults otherwise)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.replicas < 1 or args.duration <= 30:
        p.error("--replicas >= 1 and --duration > 30 s")
    params = args.param or (ENGINE_B if args.profile == "llama3-8b-h100" else [])
    for rate in (float(x) for x in args.rates.split(",") if x.strip()):
        print(run(args.profile, args.replicas, rate, args.duration, params, args.seed),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
