"""Every policy on every scenario in virtual time, and the results tables of docs/benchmark.md.

Each (policy, scenario) run uses the scenario's workload, stages, arrival process and fleet
(`bench/scenarios.py`; the four workload presets run on `replicas` x `profile`), the same seed,
and is saved as `<out>/<scenario>/<policy>.json`. With `ceiling`, every policy also runs the same
load with an unlimited KV cache (`<policy>.unlimited.json`; or only `ceiling_policies`); the
scenario's ceiling is the best of those. The table reports, per scenario and policy, the throughput at saturation (the best
output tokens/s over the stages) with its gap to the best policy and its % of the ceiling, and
the heaviest stage's p50 / p90 time to first token and prefix-cache hit rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .ceiling import saturation
from .report import load_report, save_report
from .scenarios import SCENARIOS, scenario

WORKLOADS = ("shared_prefix", "multi_turn_chat", "random", "mixed")


def _path(out_dir: str, name: str, policy: str, unlimited: bool) -> Path:
    return Path(out_dir) / name / f"{policy}{'.unlimited' if unlimited else ''}.json"


def run_one(policy: str, name: str, out_dir: str, replicas: int, profile: str, seed: int,
            unlimited: bool = False) -> str:
    """One virtual run (with `unlimited`, of the ceiling), saved; returns the report path."""
    from .ceiling import ceiling_config
    from .des import SimConfig, run_virtual

    sc = scenario(name)
    wl, load = sc.build(seed)
    cfg = SimConfig(policy=policy, replicas=sc.replicas or replicas,
                    profile=sc.profile or profile, workload=wl, load=load,
                    model="Qwen/Qwen3-32B", seed=seed, profile_overrides=dict(sc.engine))
    if unlimited:
        cfg = ceiling_config(cfg)
    result = run_virtual(cfg)
    path = _path(out_dir, name, policy, unlimited)
    save_report(result.to_dict(), path)
    return str(path)


def _top_stage(report: dict[str, Any]) -> dict[str, Any]:
    return max(report["stages"], key=lambda s: (s.get("rate") or 0.0, s["stage"]))


def _fmt(v: Any, fmt: str) -> str:
    """`v` in `fmt` (a trailing % is printed after the number, not as a percentage)."""
    if v is None:
        return "-"
    return format(v, fmt[:-1]) + "%" if fmt.endswith("%") else format(v, fmt)


def scenario_table(reports: dict[str, dict[str, Any]], ceiling: float | None) -> str:
    """Markdown for one scenario: a row per policy (its report in `reports`)."""
    lines = [("| policy | output tok/s at saturation | % of best | % of ceiling "
              "| TTFT p50 / p90 (s), top stage | prefix-cache hit, top stage |"),
             "| :--- | ---: | ---: | ---: | ---: | ---: |"]
    best = max((saturation(r) for r in reports.values()), default=0.0)
    for policy, rep in reports.items():
        sat = saturation(rep)
        top = _top_stage(rep)["metrics"]
        ttft = top["latency"]["time_to_first_token"] or {}
        hit = (top.get("prefix_cache") or {}).get("hit_rate")
        lines.append(
            f"| {policy} | {sat:,.0f} | {sat / best * 100 if best else 0:.1f}% | "
            f"{_fmt(sat / ceiling * 100 if ceiling else None, '.1f%')} | "
            f"{_fmt(ttft.get('p50'), '.3f')} / {_fmt(ttft.get('p90'), '.3f')} | "
            f"{_fmt(None if hit is None else hit * 100, '.1f%')} |")
    return "\n".join(lines)


def run_matrix(policies: Sequence[str], workloads: Sequence[str] | None, *, out_dir: str,
               replicas: int = 8, profile: str = "qwen3-32b-2xh100", seed: int = 0,
               jobs: int = 1, reuse: bool = False, ceiling: bool = False,
               ceiling_policies: Sequence[str] | None = None) -> str:
    """Run (or, with `reuse`, load existing reports for) every pair; return the tables."""
    names = list(workloads or WORKLOADS)
    for n in names:
        scenario(n)
    top_policies = list(ceiling_policies or policies) if ceiling else []
    runs = [(p, n, False) for n in names for p in policies]
    runs += [(p, n, True) for n in names for p in top_policies]
    todo = [r for r in runs if not (reuse and _path(out_dir, r[1], r[0], r[2]).exists())]
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(run_one, p, n, out_dir, replicas, profile, seed, u)
                       for p, n, u in todo]
            for f in futures:
                f.result()
    else:
        for p, n, u in todo:
            run_one(p, n, out_dir, replicas, profile, seed, u)
    tables = []
    for n in names:
        reports = {p: load_report(_path(out_dir, n, p, False)) for p in policies}
        top = (max(saturation(load_report(_path(out_dir, n, p, True))) for p in top_policies)
               if top_policies else None)
        sc = SCENARIOS[n]
        about = sc.about or f"{sc.replicas or replicas} x {sc.profile or profile}"
        head = f"**{n}** ({about}, stages {sc.stages}, seed {seed}"
        head += f"; ceiling {top:,.0f} output tok/s)" if top else ")"
        tables.append(head + "\n\n" + scenario_table(reports, top))
    return "\n\n".join(tables)
