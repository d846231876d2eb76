"""The simulator against several real runs of the fidelity ladder: means and spreads.

One real run is a poor yardstick: the same ladder on the same machine and code moves by up
to a fifth from run to run (docs/real-vllm.md, section 8). Each `inferoute demo --engine vllm
--fidelity --out DIR` writes its real, simulated and host-matched reports
(`vllm-<policy>.json`, `sim-<policy>.json`, `sim-host-matched-<policy>.json`); this module
reads several such directories and compares, per policy, stage and figure, the simulator's
mean over the runs (each run fits its own profile) with the real runs' mean and range.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metrics import headline

__all__ = ["Figure", "FIGURES", "compare_runs", "load_run", "runs_table"]

#: (headline key, column name, scale, format), as the one-run fidelity table shows them
FIGURES = (("ttft", "mean TTFT (s)", 1.0, "{:.3f}"), ("itl", "mean ITL (ms)", 1e3, "{:.1f}"),
           ("output_tokens_per_sec", "output tok/s", 1.0, "{:.1f}"),
           ("prefix_cache_hit_rate", "hit rate", 1.0, "{:.1%}"))
#: the report kinds a fidelity run writes, by file prefix
KINDS = ("vllm", "sim", "sim-host-matched")
#: the goal: a simulated figure within this fraction of the real one
TOLERANCE = 0.15


def load_run(directory: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {policy: report}} of one fidelity run's directory; a kind whose files are
    missing is left out (a run without --fidelity has only `vllm`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    root = Path(directory)
    for kind in KINDS:
        for path in sorted(root.glob(f"{kind}-*.json")):
            policy = path.stem[len(kind) + 1:]
            if kind == "sim" and policy.startswith("host-matched-"):
                continue  # sim-host-matched-<policy>.json also matches sim-*.json
            out.setdefault(kind, {})[policy] = json.loads(path.read_text())
    return out


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure of one policy's stage over the runs."""

    policy: str
    stage: int
    rate: float
    key: str
    real: tuple[float, ...]
    sim: tuple[float, ...]
    matched: tuple[float, ...]

    @property
    def real_mean(self) -> float:
        return statistics.fmean(self.real)

    def error(self, simulated: tuple[float, ...]) -> float | None:
        """The simulated mean over the real mean, less 1 (None without both)."""
        if not simulated or not self.real or self.real_mean == 0:
            return None
        return statistics.fmean(simulated) / self.real_mean - 1

    def inside(self, simulated: tuple[float, ...]) -> bool | None:
        """Whether the simulated mean lies within the real runs' range."""
        if not simulated or not self.real:
            return None
        return min(self.real) <= statistics.fmean(simulated) <= max(self.real)

    @property
    def spread(self) -> float | None:
        """The real runs' range over their mean."""
        if len(self.real) < 2 or self.real_mean == 0:
            return None
        return (max(self.real) - min(self.real)) / self.real_mean


def _values(reports: list[dict[str, Any]], stage: int, key: str) -> tuple[float, ...]:
    out = []
    for report in reports:
        stages = report.get("stages", [])
        if stage < len(stages):
            v = headline(stages[stage]).get(key)
            if v is not None:
                out.append(float(v))
    return tuple(out)


def compare_runs(runs: list[dict[str, dict[str, dict[str, Any]]]]) -> list[Figure]:
    """Every figure of every policy and stage the real runs share."""
    policies = sorted(set.intersection(*(set(r.get("vllm", {})) for r in runs))) if runs \
        else []
    figures = []
    for policy in policies:
        real = [r["vllm"][policy] for r in runs]
        stages = min(len(rep.get("stages", [])) for rep in real)
        for i in range(stages):
            rate = float(real[0]["stages"][i].get("rate") or 0.0)
            for key, _, _, _ in FIGURES:
                figures.append(Figure(
                    policy, i, rate, key, _values(real, i, key),
                    _values([r["sim"][policy] for r in runs if policy in r.get("sim", {})],
                            i, key),
                    _values([r["sim-host-matched"][policy] for r in runs
                             if policy in r.get("sim-host-matched", {})], i, key)))
    return figures


def _cell(fig: Figure, values: tuple[float, ...], scale: float, fmt: str) -> list[str]:
    if not values:
        return ["-", "-"]
    err = fig.error(values)
    mark = "" if fig.inside(values) is False else " *"
    return [fmt.format(statistics.fmean(values) * scale) + mark,
            "-" if err is None else f"{err:+.0%}"]


def runs_table(figures: list[Figure], runs: int) -> str:
    """Markdown: per policy and stage, each figure's real mean and range over the runs, the
    simulator's mean (as fitted and host-matched) and its error against the real mean (a *
    where the simulated mean lies inside the real range); then the counts."""
    head = ["policy", "stage (req/s)"]
    for _, name, _, _ in FIGURES:
        head += [f"{name} real mean (range)", "sim", "error", "host-matched", "error"]
    lines = ["| " + " | ".join(head) + " |", "| :--- | ---: |" + " ---: |" * (len(head) - 2)]
    rows: dict[tuple[str, int], list[Figure]] = {}
    for fig in figures:
        rows.setdefault((fig.policy, fig.stage), []).append(fig)
    specs = {key: (scale, fmt) for key, _, scale, fmt in FIGURES}
    for (policy, _), figs in rows.items():
        row = [policy, f"{figs[0].rate:g}"]
        for fig in figs:
            scale, fmt = specs[fig.key]
            lo, hi = min(fig.real) * scale, max(fig.real) * scale
            row.append(f"{fmt.format(fig.real_mean * scale)} ({fmt.format(lo)}-"
                       f"{fmt.format(hi)})")
            row += _cell(fig, fig.sim, scale, fmt) + _cell(fig, fig.matched, scale, fmt)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(summary(figures, runs))
    return "\n".join(lines)


def summary(figures: list[Figure], runs: int) -> str:
    """The counts: simulated means within TOLERANCE of the real mean and inside the real
    range, as fitted and host-matched; real figures whose own range exceeds TOLERANCE."""
    n = len(figures)

    def count(simulated: list[tuple[float, ...]]) -> tuple[int, int]:
        within = inside = 0
        for fig, sim in zip(figures, simulated, strict=True):
            err = fig.error(sim)
            within += err is not None and abs(err) <= TOLERANCE
            inside += fig.inside(sim) is True
        return within, inside

    fitted = count([f.sim for f in figures])
    matched = count([f.matched for f in figures])
    wide = sum(1 for f in figures if (f.spread or 0.0) > TOLERANCE)
    return (f"{runs} runs, {n} figures. Within {TOLERANCE:.0%} of the real mean: "
            f"{fitted[0]} as fitted, {matched[0]} host-matched; inside the real runs' range "
            f"(*): {fitted[1]} as fitted, {matched[1]} host-matched. The real runs' own "
            f"range exceeds {TOLERANCE:.0%} of their mean on {wide} of the {n}.")
