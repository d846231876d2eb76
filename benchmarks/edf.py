"""Deadline-ordered admission against arrival order, in virtual time.

    python benchmarks/edf.py [--policies inferoute,llm-d] [--replicas 2]
                             [--stages 6:60,9:60] [--share 0.3] [--ttft-ms 1500]
                             [--sheddable] [--seed 0] [--engine max_num_seqs=32]

A mixed load (random prompts, 3,000 tokens in, 300 out; simulated Qwen3-32B on 2xH100) goes
through the gateway's admission (flow control with its dispatch budget, the defaults
otherwise) in front of simulated replicas (bench/des.py): a `--share` of the requests carry
an `x-slo-ttft-ms: --ttft-ms` target (objective `interactive`: priority 0, or -1, sheddable,
with `--sheddable`), the rest no target (objective `standard`, priority 0). The same seeded
arrivals and the same targeted requests run three times: `ordering: fcfs` (arrival order, the
old default), `edf` (earliest deadline first, the default) with `shedLate: false`, and `edf`
with `shedLate: true` (a sheddable request still queued at its deadline gets 429
slo_unattainable). Prints per stage: SLO attainment (targeted requests whose first token came
within their target; shed ones count as missed), goodput (completed requests per second that
met their target, if they had one), what was shed, and the TTFT of requests without a target.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

from inferoute.bench.des import SimConfig, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.slo_mix import SloMix, slo_summary
from inferoute.bench.workloads import make_workload, parse_params
from inferoute.core.admission import parse_admission_config

VARIANTS = (("fcfs", False), ("edf", False), ("edf", True))


def run(args: argparse.Namespace) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each policy's and variant's `slo_summary`."""
    workload = make_workload("random", {"input_len": 3000, "output_len": 300,
                                        "num_prompts": 4000}, seed=args.seed)
    mix = SloMix(share=args.share, ttft_ms=args.ttft_ms, objective="interactive",
                 other_objective="standard", seed=args.seed)
    out = []
    for policy, (ordering, shed_late) in itertools.product(args.policies.split(","),
                                                            VARIANTS):
        admission = parse_admission_config({
            "objectives": [{"name": "interactive", "priority": -1 if args.sheddable else 0},
                           {"name": "standard", "priority": 0}],
            "flowControl": {"ordering": ordering, "shedLate": shed_late, "ttl": "600s",
                            "maxRequests": 10_000}})
        load = LoadSpec(stages=parse_stages(args.stages), seed=args.seed)
        cfg = SimConfig(policy=policy, replicas=args.replicas, profile=args.profile,
                        workload=workload, load=load, model="model", seed=args.seed,
                        admission=admission, slo=mix,
                        profile_overrides=parse_params(args.engine, "engine override"))
        label = f"{policy} | {ordering}{' + shedLate' if shed_late else ''}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        res = run_virtual(cfg)
        out.append((label, slo_summary(res.records, res.targets)))
    return out


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(results: list[tuple[str, list[dict[str, Any]]]], rates: list[float | None]) -> str:
    rows = ["| stage | policy | order | targeted | SLO attainment | goodput (req/s) | shed | "
            "untargeted TTFT p50 / p90 (s) |",
            "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for stage, rate in enumerate(rates):
        for label, summary in results:
            s = summary[stage]
            shed = ", ".join(f"{k} {v}" for k, v in sorted(s["shed"].items())) or "0"
            rows.append(f"| rate {rate:g} | {label} | {s['targeted']} | "
                        f"{_f(s['attainment'] and 100 * s['attainment'], '.1f')}% | "
                        f"{_f(s['goodput'], '.2f')} | {shed} | "
                        f"{_f(s['untargeted_ttft_p50'], '.2f')} / "
                        f"{_f(s['untargeted_ttft_p90'], '.2f')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", default="inferoute,llm-d",
                   help="comma-separated packaged policies or config files")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--profile", default="qwen3-32b-2xh100")
    p.add_argument("--stages", default="6:60,9:60", help="RATE:SECONDS,... (Poisson)")
    p.add_argument("--share", type=float, default=0.3, help="share of requests with a target")
    p.add_argument("--ttft-ms", type=float, default=1500.0, help="their TTFT target")
    p.add_argument("--sheddable", action="store_true",
                   help="the targeted requests' objective is sheddable (priority -1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", action="append", metavar="NAME=VALUE",
                   help="override a profile field, repeatable (e.g. max_num_seqs=32)")
    args = p.parse_args(argv)
    results = run(args)
    rates = [s.rate for s in parse_stages(args.stages)]
    print(table(results, rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
