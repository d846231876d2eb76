"""A virtual run's whole outcome, every request's record included, to compare two trees.

    PYTHONPATH=OLD/src python benchmarks/sim_records.py --policy P -o old.json [--slo]
    PYTHONPATH=NEW/src python benchmarks/sim_records.py --policy P -o new.json [--slo]
    cmp old.json new.json

Runs `inferoute bench sim --policy P --replicas 4 --stages 6:20,12:20` (other `bench sim`
arguments may follow `--`; with `--trace FILE` among them, the trace replaces the stages)
and writes its report without `wall_seconds`, plus every request's
record (endpoint, token times, cached tokens, inter-token gaps) and the latency model's
figures, as sorted JSON: a change that keeps every decision writes the same bytes. With
`--slo`, half the requests (drawn by seed) carry `x-slo-ttft-ms: 1500` of a sheddable
objective (`SimConfig.slo`, as benchmarks/edf.py sends them), so `latency-slo-scorer`
predicts every candidate.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from typing import Any

from inferoute.bench.command import _build, latency_models
from inferoute.bench.des import SimConfig, VirtualBench
from inferoute.bench.slo_mix import SloMix
from inferoute.bench.workloads import parse_params
from inferoute.cli import build_parser
from inferoute.core.admission import parse_admission_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True)
    p.add_argument("--slo", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("rest", nargs="*", help="more `bench sim` arguments (after --)")
    args = p.parse_args()
    stages = [] if "--trace" in args.rest else ["--stages", "6:20,12:20"]
    sim = build_parser().parse_args(["bench", "sim", "--policy", args.policy, "--replicas", "4",
                                     *stages, "--quiet", *args.rest])
    workload, load = _build(sim)
    cfg = SimConfig(policy=sim.policy, replicas=sim.replicas, profile=sim.profile,
                    workload=workload, load=load, model=sim.model, seed=sim.seed,
                    ignore_eos=sim.ignore_eos, scrape_interval=sim.scrape_interval,
                    profile_overrides=parse_params(sim.engine, "engine override"))
    if args.slo:
        cfg = replace(cfg, slo=SloMix(share=0.5, ttft_ms=1500, objective="interactive"),
                      admission=parse_admission_config(
                          {"objectives": [{"name": "interactive", "priority": -1}]}))
    bench = VirtualBench(cfg, None)
    result = bench.run()
    report: dict[str, Any] = result.to_dict()
    report.pop("wall_seconds")
    report["latency_model"] = latency_models(bench.scheduler)
    report["records"] = [[{f.name: (list(getattr(r, f.name)) if f.name == "itl"
                                    else getattr(r, f.name)) for f in fields(r)}
                          for r in stage] for stage in result.records]
    report["targets"] = result.targets
    with open(args.output, "w") as f:
        json.dump(report, f, sort_keys=True, default=str)
    print(f"{args.output}: {sum(map(len, result.records))} requests")


if __name__ == "__main__":
    main()
