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
    for ax, title in zip(axes, ("mean TTFT (s)", "mean inter-token latency (ms)",
                                "mean request latency (s)")):
        ax.set_title(title)
        ax.set_xlabel("request rate (QPS)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    p = out / "latency_vs_qps.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rep in reports:
        for ax, key in zip(axes, ("requests_per_sec", "output_tokens_per_sec")):
            xs, ys = _series(rep, "throughput", key, field="")
            ax.plot(xs, ys, marker="o", label=label)
    for ax, title in zip(axes, ("requests/s", "output tokens/s")):
        ax.set_title(f"throughput: {title}")
        ax.set_xlabel("request rate (QPS)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    p = out / "throughput_vs_qps.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

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
    ax.set_title("TTFT distribution")
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = out / "ttft_distribution.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
