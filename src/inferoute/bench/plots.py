"""PNG plots of one or more benchmark reports (matplotlib, Agg backend: no display needed).

- `latency_vs_qps.png`: mean TTFT, mean inter-token latency and mean request latency per stage
  rate, one line per report;
- `throughput_vs_qps.png`: requests/s and output tokens/s per stage rate;
- `ttft_distribution.png`: TTFT percentiles (p0.1 ... p99.9) of one stage per report, as a CDF.
"""

from __future__ import annotations

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


def _save(plt: Any, fig: Any, axes: Sequence[Any], titles: Sequence[str], xlabel: str,
          path: Path) -> Path:
    """Title, label and grid each panel, put the legend on the first, write `path`."""
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(reports: Sequence[tuple[str, dict[str, Any]]], out_dir: str | Path, *,
                rate: float | None = None) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for (label, rep) in reports:
        for ax, key, scale in zip(axes, ("time_to_first_token", "inter_token_latency",
                                         "request_latency"), (1.0, 1000.0, 1.0)):
            xs, ys = _series(rep, "latency", key)
            ax.plot(xs, [y * scale for y in ys], marker="o", label=label)
    paths.append(_save(plt, fig, axes, ("mean TTFT (s)", "mean inter-token latency (ms)",
                                        "mean request latency (s)"),
                       "request rate (QPS)", out / "latency_vs_qps.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rep in reports:
        for ax, key in zip(axes, ("requests_per_sec", "output_tokens_per_sec")):
            xs, ys = _series(rep, "throughput", key, field="")
            ax.plot(xs, ys, marker="o", label=label)
    paths.append(_save(plt, fig, axes, ("throughput: requests/s", "throughput: output tokens/s"),
                       "request rate (QPS)", out / "throughput_vs_qps.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, rep in reports:
        stage = pick_stage(rep, rate=rate) if rate is not None else pick_stage(rep)
        d = stage["metrics"]["latency"].get("time_to_first_token")
        if not d:
            continue
        xs = [d["min"], *(d[percentile_key(q)] for q in PERCENTILES), d["max"]]
        ys = [0.0, *(q / 100 for q in PERCENTILES), 1.0]
        ax.plot(xs, ys, marker=".", label=f"{label} (rate {stage.get('rate')})")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_ylabel("fraction of requests")
    paths.append(_save(plt, fig, [ax], ("TTFT distribution",), "time to first token (s)",
                       out / "ttft_distribution.png"))
    return paths
