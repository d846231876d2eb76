"""The comparison table of `inferoute bench compare`, shaped like the seed's.

One column per report (its chosen stage's figures; each row says whether it is a mean or a
percentile), then for each report after the first its change from the first: absolute (Δ) and
relative (Δ%); a rate such as the prefix-cache hit rate changes in percentage points (pp), never
relatively. Narrow enough for an 80-column terminal with two reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .metrics import headline
from .report import ReportError, pick_stage

#: The seed run's published stages: 8 x Qwen3-32B TP=2 on H100, inference-perf run
#: `inference-perf_1769435052`. Rate 40 is the seed document's table; rate 60 is the same run's
#: last stage, which the llm-d inference-scheduling guide published later (its README, 2026-02).
SEED_STAGES: dict[float, dict[str, dict[str, float]]] = {
    40.0: {
        "k8s (seed)": {"requests_per_sec": 6.3374, "input_tokens_per_sec": 48014.91,
                       "output_tokens_per_sec": 5926.44, "total_tokens_per_sec": 53941.35,
                       "request_latency": 97.304, "ttft": 27.695, "itl": 0.06953},
        "llm-d (seed)": {"requests_per_sec": 15.3932, "input_tokens_per_sec": 116621.97,
                         "output_tokens_per_sec": 14533.22, "total_tokens_per_sec": 131155.20,
                         "request_latency": 54.720, "ttft": 0.113, "ttft_p90": 0.17324,
                         "itl": 0.05452},
    },
    60.0: {
        "k8s (seed)": {"requests_per_sec": 5.7306, "input_tokens_per_sec": 43417.86,
                       "output_tokens_per_sec": 5362.16, "total_tokens_per_sec": 48780.02,
                       "request_latency": 105.4133, "ttft": 34.9145, "itl": 0.07042},
        "llm-d (seed)": {"requests_per_sec": 14.4123, "input_tokens_per_sec": 109192.83,
                         "output_tokens_per_sec": 13574.37, "total_tokens_per_sec": 122767.19,
                         "request_latency": 67.8649, "ttft": 0.1203, "ttft_p90": 0.18096,
                         "itl": 0.06766},
    },
}

#: llm-d's republished run of the same benchmark with llm-d v0.8.0 (same inference-perf ladder and
#: shared-prefix workload, 8 x Qwen3-32B TP=2 on H100, later llm-d and vLLM images), from
#: llm-d/llm-d guides/optimized-baseline/benchmark-results/vllm-qwen3-32b-h100/README.md: per
#: stage rate, (output tokens/s, TTFT p50 s, TTFT p90 s) of its two arms; a TTFT of 0.0 is that
#: report's empty latency histogram (no figure). Its Service arm pairs with our `round-robin`, its
#: llm-d arm (the optimized-baseline profile) with our `llm-d-optimized`.
LLM_D_RUN: dict[str, dict[float, tuple[float, float, float]]] = {
    "round-robin": {
        3: (1889, 0.0, 0.0), 10: (4944, 0.0, 0.0), 15: (6066, 0.0, 0.0), 20: (4555, 0.9, 2.4),
        22: (6239, 18.3, 46.1), 25: (6350, 0.4, 0.9), 30: (6251, 0.8, 4.9),
        35: (6544, 21.0, 46.2), 40: (6228, 20.0, 37.9), 43: (6860, 25.7, 61.9),
        46: (6526, 20.4, 66.8), 49: (6956, 66.9, 139.9), 52: (7049, 69.9, 143.8),
        55: (6402, 78.3, 158.5), 57: (6317, 83.1, 153.3), 60: (6764, 88.1, 154.1)},
    "llm-d-optimized": {
        3: (1511, 0.0, 0.0), 10: (4597, 0.0, 0.0), 15: (8995, 0.0, 0.0), 20: (6656, 0.4, 4.2),
        22: (10809, 0.2, 1.4), 25: (10452, 0.2, 0.2), 30: (10509, 0.1, 0.2),
        35: (12290, 0.1, 0.2), 40: (14134, 0.1, 0.3), 43: (13522, 0.2, 0.2),
        46: (14050, 0.1, 0.2), 49: (14941, 0.9, 2.1), 52: (14542, 0.3, 1.3),
        55: (14607, 0.1, 0.2), 57: (13451, 0.2, 19.9), 60: (13528, 0.2, 0.9)},
}

#: (label, headline key, scale, decimals) rows of the comparison table
ROWS: tuple[tuple[str, str, float, int], ...] = (
    ("Requests/s", "requests_per_sec", 1.0, 4),
    ("Input tokens/s", "input_tokens_per_sec", 1.0, 2),
    ("Output tokens/s", "output_tokens_per_sec", 1.0, 2),
    ("Total tokens/s", "total_tokens_per_sec", 1.0, 2),
    ("Latency, mean (s)", "request_latency", 1.0, 3),
    ("TTFT, mean (s)", "ttft", 1.0, 3),
    ("TTFT, p90 (s)", "ttft_p90", 1.0, 3),
    ("ITL, mean (ms)", "itl", 1000.0, 2),
    ("Cache hit rate (%)", "prefix_cache_hit_rate", 100.0, 1),
)
#: rows that are rates (fractions): their change is in percentage points
POINTS: frozenset[str] = frozenset({"prefix_cache_hit_rate"})


def _fmt(value: float | None, scale: float, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value * scale:,.{decimals}f}"


def _relative(key: str, value: float | None, base: float | None) -> str:
    """The change from `base`: in percentage points for a rate, else in % of `base`."""
    if value is None or base is None:
        return "-"
    if key in POINTS:
        return f"{(value - base) * 100:+.1f} pp"
    return f"{(value - base) / base * 100:+.1f}%" if base else "-"


def compare_table(columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per metric, one column per (label, headline dict), and for each
    column after the first its change from the first (Δ, and Δ% or points), then a legend."""
    if not columns:
        raise ReportError("nothing to compare")
    base_label, base = columns[0]
    header = ["Metric", *(label for label, _ in columns)]
    for label, _ in columns[1:]:
        header += [f"Δ {label}", "Δ%"]
    lines = ["| " + " | ".join(header) + " |", "| :--- |" + " ---: |" * (len(header) - 1)]
    for name, key, scale, dec in ROWS:
        if all(c.get(key) is None for _, c in columns):
            continue
        row = [name, *(_fmt(c.get(key), scale, dec) for _, c in columns)]
        b = base.get(key)
        for _, c in columns[1:]:
            v = c.get(key)
            if key in POINTS:   # the points are the change: no relative one beside them
                row += [_relative(key, v, b), ""]
            elif v is None or b is None:
                row += ["-", "-"]
            else:
                row += [f"{(v - b) * scale:+,.{dec}f}", _relative(key, v, b)]
        lines.append("| " + " | ".join(row) + " |")
    if len(columns) > 1:
        lines += ["", f"Δ: change from {base_label}; Δ% relative to it; hit rate in points (pp)."]
    return "\n".join(lines)


def compare_reports(reports: Sequence[tuple[str, dict[str, Any]]], *, rate: float | None = None,
                    index: int | None = None) -> str:
    """`compare_table` of each report's chosen stage."""
    cols = [(label, headline(pick_stage(r, rate=rate, index=index))) for label, r in reports]
    return compare_table(cols)


def seed_stage(rate: float) -> dict[str, dict[str, float]]:
    """The seed run's published rows at `rate`; a `ReportError` for a rate it did not publish."""
    seed = SEED_STAGES.get(float(rate))
    if seed is None:
        raise ReportError(f"the seed's run published the stages at rates "
                          f"{' and '.join(f'{r:g}' for r in SEED_STAGES)} only, not {rate:g}")
    return seed


def seed_table(sim: dict[str, dict[str, Any]], rate: float = 40.0) -> str:
    """The seed run's rows at `rate` (40 or 60) beside ours: k8s vs our round-robin, llm-d vs
    our llm-d (each with the gap to the seed), then any other simulated policy with its gap to
    our llm-d.

    `sim` maps policy name -> headline dict of its stage at `rate`.
    """
    seed = seed_stage(rate)
    k8s, llmd = seed["k8s (seed)"], seed["llm-d (seed)"]
    header = ["Metric", "k8s (seed)", "round-robin (sim)", "Δ% vs seed", "llm-d (seed)",
              "llm-d (sim)", "Δ% vs seed"]
    others = [p for p in sim if p not in ("round-robin", "llm-d")]
    for p in others:
        header += [f"{p} (sim)", "Δ% vs llm-d (sim)"]
    lines = ["| " + " | ".join(header) + " |", "| :--- |" + " ---: |" * (len(header) - 1)]

    for name, key, scale, dec in ROWS:
        rr, ld = sim.get("round-robin", {}), sim.get("llm-d", {})
        row = [name, _fmt(k8s.get(key), scale, dec), _fmt(rr.get(key), scale, dec),
               _relative(key, rr.get(key), k8s.get(key)), _fmt(llmd.get(key), scale, dec),
               _fmt(ld.get(key), scale, dec), _relative(key, ld.get(key), llmd.get(key))]
        for p in others:
            v = sim[p].get(key)
            row += [_fmt(v, scale, dec), _relative(key, v, ld.get(key))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def llm_d_run_table(label: str, report: dict[str, Any]) -> str:
    """llm-d's v0.8.0 run of the benchmark beside `report`, stage by stage: the arm that pairs
    with the report's policy `label` (`round-robin` or `llm-d-optimized`), its output tokens/s
    and TTFT p50 / p90 against the report's stage at the same rate (the last one at that rate,
    so the warm-up stage at 15 req/s is skipped)."""
    ladder = LLM_D_RUN.get(label)
    if ladder is None:
        raise ReportError(f"llm-d's run has arms for {' and '.join(LLM_D_RUN)} only; "
                          f"this report is {label!r}")
    header = ["rate", "output tok/s (llm-d's run)", f"{label} (sim)", "Δ%",
              "TTFT p50 (run)", "(sim)", "TTFT p90 (run)", "(sim)"]
    lines = [f"**{label}** beside llm-d's v0.8.0 run:", "",
             "| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]

    def secs(v: float | None) -> str:
        return "-" if not v else f"{v:.1f} s" if v >= 10 else f"{v:.2f} s"

    def published(v: float) -> str:
        return "-" if not v else f"{v:g} s"

    for rate, (out, p50, p90) in ladder.items():
        try:
            stage = pick_stage(report, rate=rate)
        except ReportError:
            row = [f"{rate:g}", f"{out:,.0f}", "-", "-", published(p50), "-", published(p90),
                   "-"]
        else:
            m = stage["metrics"]
            sim_out = m["throughput"]["output_tokens_per_sec"]
            ttft = m["latency"].get("time_to_first_token") or {}
            row = [f"{rate:g}", f"{out:,.0f}", f"{sim_out:,.0f}",
                   f"{(sim_out - out) / out * 100:+.1f}%", published(p50),
                   secs(ttft.get("p50")), published(p90), secs(ttft.get("p90"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
