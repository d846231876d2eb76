"""PNG plots of one or more benchmark reports (matplotlib, Agg backend: no display needed).

- `latency_vs_qps.png`: mean TTFT, mean inter-token latency and mean request latency per stage
  rate, one line per report;
- `throughput_vs_qps.png`: requests/s (with the "achieved = offered" line) and output tokens/s
  per stage rate;
- `ttft_distribution.png`: the CDF of one stage's per-request TTFTs per report (a step per
  request; reports saved before they kept their TTFTs: the percentiles joined, labelled so).

Every figure is titled with the set-up (replicas, profile, workload) read from the first
report's config; `caption` adds a note under the latency plot.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import PERCENTILES, percentile_key
from .report import pick_stage


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(report: dict[str, Any], section: str, key: str,
            field: str = "mean") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in report["stages"]:
        if s.get("rate") is None:
            continue
        block = s["metrics"][section].get(key)
        value = block.get(field) if isinstance(block, dict) else block
        if value is None:
            continue
        xs.append(float(s["rate"]))
        ys.append(float(value))
    pairs = sorted(zip(xs, ys))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def setup_title(report: dict[str, Any]) -> str:
    """One line naming a report's set-up: fleet, workload and clock."""
    cfg = report.get("config") or {}
    parts = []
    if cfg.get("replicas"):
        fleet = f"{cfg['replicas']} x {cfg.get('profile') or 'replica'}"
        parts.append(fleet + (" (simulated)" if cfg.get("profile") else ""))
    wl = cfg.get("workload") or {}
    if wl.get("name") == "shared_prefix":
        parts.append(f"shared prefix: {wl.get('num_groups')} groups x "
                     f"{wl.get('num_prompts_per_group')}, {wl.get('system_prompt_len')}+"
                     f"{wl.get('question_len')} prompt, {wl.get('output_len')} output tokens")
    elif wl.get("name"):
        parts.append(str(wl["name"]))
    mode = cfg.get("mode")
    if mode:
        parts.append("live" if mode == "live" else "virtual time")
    return " · ".join(parts)


def ttft_cdf(stage: dict[str, Any]) -> tuple[list[float], list[float], bool] | None:
    """(TTFTs, cumulative fractions, exact) of a stage: from its per-request samples when it
    has them (exact), else its percentiles (min, p0.1 ... p99.9, max); None without TTFTs."""
    values = (stage.get("samples") or {}).get("time_to_first_token")
    if values:
        n = len(values)
        return list(values), [(i + 1) / n for i in range(n)], True
    d = stage["metrics"]["latency"].get("time_to_first_token")
    if not d:
        return None
    xs = [d["min"], *(d[percentile_key(q)] for q in PERCENTILES), d["max"]]
    return xs, [0.0, *(q / 100 for q in PERCENTILES), 1.0], False


def _save(plt: Any, fig: Any, axes: Sequence[Any], titles: Sequence[str], xlabel: str,
          path: Path, suptitle: str, caption: str | None = None) -> Path:
    """Title, label and grid each panel, put the legend on the first, write `path`."""
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if suptitle:   # wrapped to the figure's width (about 12 characters an inch at 10 pt)
        fig.suptitle(textwrap.fill(suptitle, width=int(fig.get_figwidth() * 12)), fontsize=10)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=8.5, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(reports: Sequence[tuple[str, dict[str, Any]]], out_dir: str | Path, *,
                rate: float | None = None, title: str | None = None,
                caption: str | None = None) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths.

    `rate` picks the stage of the TTFT distribution (default: the best-throughput one);
    `title` overrides the set-up line; `caption` is printed under the latency plot.
    """
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title if title is not None else (setup_title(reports[0][1]) if reports else "")
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6 if caption else 4.2))
    for (label, rep) in reports:
        for ax, key, scale in zip(axes, ("time_to_first_token", "inter_token_latency",
                                         "request_latency"), (1.0, 1000.0, 1.0)):
            xs, ys = _series(rep, "latency", key)
            ax.plot(xs, [y * scale for y in ys], marker="o", label=label)
    paths.append(_save(plt, fig, axes, ("mean TTFT (s)", "mean inter-token latency (ms)",
                                        "mean request latency (s)"),
                       "offered load (requests/s)", out / "latency_vs_qps.png", title, caption))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    offered: set[float] = set()
    for label, rep in reports:
        for ax, key in zip(axes, ("requests_per_sec", "output_tokens_per_sec")):
            xs, ys = _series(rep, "throughput", key, field="")
            ax.plot(xs, ys, marker="o", label=label)
            if key == "requests_per_sec":
                offered.update(xs)
    if offered:
        lo, hi = min(offered), max(offered)
        axes[0].plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1,
                     label="achieved = offered")
    paths.append(_save(plt, fig, axes, ("achieved requests/s", "output tokens/s"),
                       "offered load (requests/s)", out / "throughput_vs_qps.png", title))

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for label, rep in reports:
        stage = pick_stage(rep, rate=rate) if rate is not None else pick_stage(rep)
        cdf = ttft_cdf(stage)
        if cdf is None:
            continue
        xs, ys, exact = cdf
        where = f"rate {stage.get('rate'):g}" if stage.get("rate") is not None else \
            f"stage {stage.get('stage')}"
        if exact:
            req = stage["metrics"]["requests"]
            ax.step(xs, ys, where="post",
                    label=f"{label} ({where}, {req['total'] - req['failures']} requests)")
        else:
            ax.plot(xs, ys, marker=".", label=f"{label} ({where}, percentiles only)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    paths.append(_save(plt, fig, [ax], ("TTFT distribution (CDF)",), "time to first token (s)",
                       out / "ttft_distribution.png", title))
    return paths
