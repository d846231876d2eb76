"""Every policy on every workload in virtual time, and the README's results table.

Each (policy, workload) run uses the workload's preset stages and arrival process (see
`workloads.DEFAULT_STAGES` / `DEFAULT_LOAD`), 8 replicas of the given profile, the same seed,
and is saved as `<out>/<workload>/<policy>.json`. The table reports, per workload, the
throughput at saturation (the best output tokens/s over the stages) and the TTFT of the heaviest
stage, with each policy's gap to the best.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .report import load_report, save_report

WORKLOADS = ("shared_prefix", "multi_turn_chat", "random", "mixed")


def run_one(policy: str, workload: str, out_dir: str, replicas: int, profile: str,
            seed: int) -> str:
    """One virtual run, saved; returns the report path."""
    from .des import SimConfig, run_virtual
    from .load import LoadSpec, parse_stages
    from .workloads import DEFAULT_LOAD, DEFAULT_PARAMS, DEFAULT_STAGES, make_workload

    wl = make_workload(workload, DEFAULT_PARAMS[workload], seed=seed)
    kind, burst = DEFAULT_LOAD[workload]
    load = LoadSpec(parse_stages(DEFAULT_STAGES[workload]), kind=kind,  # type: ignore[arg-type]
                    burstiness=burst, seed=seed)
    result = run_virtual(SimConfig(policy=policy, replicas=replicas, profile=profile,
                                   workload=wl, load=load, model="Qwen/Qwen3-32B", seed=seed))
    path = Path(out_dir) / workload / f"{policy}.json"
    save_report(result.to_dict(), path)
    return str(path)


def _saturation(report: dict[str, Any]) -> float:
    return max(s["metrics"]["throughput"]["output_tokens_per_sec"] for s in report["stages"])


def _top_stage(report: dict[str, Any]) -> dict[str, Any]:
    return max(report["stages"], key=lambda s: (s.get("rate") or 0.0, s["stage"]))


def matrix_table(results: dict[str, dict[str, dict[str, Any]]], policies: Sequence[str],
                 workloads: Sequence[str]) -> str:
    """Markdown: a row per policy; per workload saturation output tok/s (% of best) and the
    heaviest stage's mean / p90 TTFT."""
    head = ["policy"]
    for w in workloads:
        head += [f"{w}: output tok/s at saturation", f"{w}: TTFT mean / p90 (s)"]
    lines = ["| " + " | ".join(head) + " |", "| :--- |" + " ---: |" * (len(head) - 1)]
    best = {w: max((_saturation(results[p][w]) for p in policies if w in results.get(p, {})),
                   default=0.0) for w in workloads}
    for p in policies:
        row = [p]
        for w in workloads:
            rep = results.get(p, {}).get(w)
            if rep is None:
                row += ["-", "-"]
                continue
            sat = _saturation(rep)
            pct = sat / best[w] * 100 if best[w] else 0.0
            ttft = _top_stage(rep)["metrics"]["latency"]["time_to_first_token"] or {}
            row.append(f"{sat:,.0f} ({pct:.1f}%)")
            row.append(f"{ttft.get('mean', float('nan')):.3f} / {ttft.get('p90', float('nan')):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_matrix(policies: Sequence[str], workloads: Sequence[str] | None, *, out_dir: str,
               replicas: int = 8, profile: str = "qwen3-32b-2xh100", seed: int = 0,
               jobs: int = 1, reuse: bool = False) -> str:
    """Run (or, with `reuse`, load existing reports for) every pair; return the table."""
    wls = list(workloads or WORKLOADS)
    for w in wls:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    todo = [(p, w) for w in wls for p in policies
            if not (reuse and (Path(out_dir) / w / f"{p}.json").exists())]
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, os.cpu_count() or 1)) as pool:
            futures = [pool.submit(run_one, p, w, out_dir, replicas, profile, seed)
                       for p, w in todo]
            for f in futures:
                f.result()
    else:
        for p, w in todo:
            run_one(p, w, out_dir, replicas, profile, seed)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for p in policies:
        for w in wls:
            results.setdefault(p, {})[w] = load_report(Path(out_dir) / w / f"{p}.json")
    return matrix_table(results, policies, wls)
