"""The calibration report: what the timing model predicts for a profile, beside reference figures.

`inferoute sim calibrate --profile NAME` prints it. The reference column holds the roofline
estimates of docs/design (Qwen3-32B on 2 x H100, TP=2); the model is derived from first
principles (docs/simulator-model.md), not fitted to them. The report also measures how fast
`Engine.step()` runs on this machine, since the virtual-time benchmark's speed depends on it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .engine import Engine, SimRequest
from .profile import EngineProfile, load_profile
from .timing import TimingModel

__all__ = ["calibration_report", "main_calibrate", "measure_step_rate", "print_report",
           "seed_bandwidth_bound"]

#: design.md's roofline estimates for Qwen3-32B on 2 x H100 (TP=2)
DESIGN_REFERENCE = {
    "qwen3-32b-2xh100": {
        "prefill tokens/s": 13_500.0,
        "decode step, batch 1, 8k context (ms)": 15.0,
        "decode step, batch 100, 8k context (ms)": 50.0,
        "KV capacity (tokens)": 270_000.0,
        "KV capacity (blocks)": 17_000.0,
        # the seed's llm-d row at rate 40 (design.md): its mean inter-token latency, which also
        # carries the prefill work mixed into the decode steps, so a pure decode step at the
        # same load must be faster than this
        "decode step at the seed's llm-d load (ms)": 54.52,
    },
}

#: the seed's llm-d stage at rate 40: Little's law gives the sequences in flight per replica
#: (15.39 requests/s x 54.72 s mean latency / 8 replicas); prompts were 7,576 tokens on average
#: (its report's input_length) and a sequence is on average half-way through 1,000 outputs
SEED_LOAD = {"sequences": 15.39 * 54.72 / 8, "context": 7_576 + 500, "itl_ms": 54.52}

PROMPT = 7_200          # the reference workload: 6,000-token system prompt + 1,200-token question
SHARED = 6_000
CONTEXT = 8_000


def calibration_report(profile: EngineProfile) -> dict[str, Any]:
    """Model figures for `profile`: rows of {metric, model, reference, note}."""
    t = TimingModel(profile)
    ref = DESIGN_REFERENCE.get(profile.name, {})
    rows: list[dict[str, Any]] = []

    def row(metric: str, value: float, note: str = "") -> None:
        rows.append({"metric": metric, "model": value, "reference": ref.get(metric), "note": note})

    cold = t.prefill_seconds(PROMPT)
    warm = t.prefill_seconds(PROMPT, cached=SHARED)
    row("prefill tokens/s", PROMPT / cold, f"{PROMPT:,}-token prompt alone, uncached")
    row("prefill of the prompt, cold (s)", cold, "TTFT without queueing")
    row("prefill of the prompt, 6k cached (s)", warm, f"{SHARED:,} tokens cached")
    for batch in (1, 32, 100):
        step = t.decode_seconds(batch, CONTEXT)
        row(f"decode step, batch {batch}, 8k context (ms)", step * 1e3,
            f"{batch / step:,.0f} output tok/s per replica")
    if profile.name in DESIGN_REFERENCE:
        seq, ctx = round(SEED_LOAD["sequences"]), round(SEED_LOAD["context"])
        row("decode step at the seed's llm-d load (ms)", t.decode_seconds(seq, ctx) * 1e3,
            f"batch {seq}, {ctx:,}-token context")
        rows.append({"metric": "HBM efficiency the seed implies (at least)",
                     "model": profile.memory_efficiency,
                     "reference": seed_bandwidth_bound(profile),
                     "note": "memory_efficiency vs the seed's bound"})
    row("KV capacity (tokens)", profile.kv_capacity_tokens,
        "derived from memory" if profile.num_blocks_derived else "set in the profile")
    row("KV capacity (blocks)", float(profile.num_blocks or 0), f"block size {profile.block_size}")
    row("KV per token (KiB)", profile.kv_bytes_per_token / 1024,
        "2 x layers x kv heads x head dim x bytes")
    row("8k-token sequences that fit", profile.kv_capacity_tokens / CONTEXT, "no sharing")
    return {
        "profile": profile.name,
        "description": profile.description,
        "model": profile.model,
        "gpu": f"{profile.tensor_parallel} x {profile.gpu}",
        "scheduler": {"max_num_seqs": profile.max_num_seqs,
                      "max_num_batched_tokens": profile.max_num_batched_tokens,
                      "block_size": profile.block_size, "max_loras": profile.max_loras},
        "rows": rows,
    }


def seed_bandwidth_bound(profile: EngineProfile) -> float:
    """The least HBM efficiency that lets a pure decode step at the seed's llm-d load (weights
    plus every sequence's KV, read once) fit in the seed's mean inter-token latency, after this
    profile's fixed per-step costs. The seed's ITL also carries prefill work, so its replicas
    streamed memory at least this efficiently; a profile below the bound decodes too slowly."""
    t = TimingModel(profile)
    seqs, ctx = SEED_LOAD["sequences"], SEED_LOAD["context"]
    hbm = profile.hbm_tbps * 1e12 * profile.tensor_parallel
    moved = profile.weight_bytes + seqs * ctx * profile.kv_bytes_per_token
    budget = (SEED_LOAD["itl_ms"] / 1e3 - t.overhead - t.sec_comm_fixed
              - seqs * t.sec_comm_per_token)
    return moved / (budget * hbm)


def measure_step_rate(profile: EngineProfile, *, batch: int = 100, steps: int = 2_000,
                      prompt: int = PROMPT, shared: int = SHARED) -> dict[str, float]:
    """Wall-clock speed of `Engine.step()` in a steady state of `batch` sequences of the
    reference workload's shape (a shared system prompt plus a private question, ~8k context at
    the end); a finished request is replaced at once, so some steps carry a prefill chunk."""
    engine = Engine(profile)
    batch = min(batch, profile.max_num_seqs)
    prompt = min(prompt, engine.max_model_len // 2)
    shared = min(shared, prompt * 5 // 6)
    max_tokens = min(1_000, engine.max_model_len - prompt)
    prefix = list(range(1_000, 1_000 + shared))
    serial = 0

    def add(now: float) -> None:
        nonlocal serial
        base = 10_000_000 + serial * prompt
        engine.add_request(SimRequest(f"r{serial}", prefix + list(range(base, base + prompt - shared)),
                                      max_tokens, ignore_eos=True), now)
        serial += 1

    now = 0.0
    for _ in range(batch):
        add(now)
    for _ in range(steps // 4):                     # warm up into a steady state
        out = engine.step(now)
        now += out.duration
        for _ in range(sum(o.finished for o in out.outputs)):
            add(now)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = engine.step(now)
        now += out.duration
        for _ in range(sum(o.finished for o in out.outputs)):
            add(now)
    wall = time.perf_counter() - t0
    stats = engine.stats()
    return {"batch": float(stats.running), "steps": float(steps), "seconds": wall,
            "steps_per_second": steps / wall, "us_per_step": wall / steps * 1e6,
            "preemptions": float(stats.preemptions), "virtual_seconds": now}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1_000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def print_report(report: dict[str, Any], rate: dict[str, float] | None = None) -> None:
    """Print a report (and an optional step-rate measurement) as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    sched = report["scheduler"]
    table = Table(title=f"{report['profile']}: {report['description']}", title_justify="left")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("design.md", justify="right")
    table.add_column("model / ref", justify="right")
    table.add_column("note", style="dim")
    for r in report["rows"]:
        ratio = f"{r['model'] / r['reference']:.2f}" if r["reference"] else "-"
        table.add_row(r["metric"], _fmt(r["model"]), _fmt(r["reference"]), ratio, r["note"])
    console.print(table)
    console.print(f"scheduler: max_num_seqs={sched['max_num_seqs']} "
                  f"max_num_batched_tokens={sched['max_num_batched_tokens']} "
                  f"block_size={sched['block_size']} max_loras={sched['max_loras']}")
    if rate:
        console.print(f"engine speed on this machine: {rate['steps_per_second']:,.0f} steps/s "
                      f"({rate['us_per_step']:.0f} us per step) at batch {rate['batch']:.0f} "
                      f"(shared-prefix workload, {rate['steps']:.0f} steps, "
                      f"{rate['preemptions']:.0f} preemptions)")


def main_calibrate(args: argparse.Namespace) -> int:
    """`inferoute sim calibrate`: print the report for args.profile (a name or a YAML path)."""
    profile = load_profile(getattr(args, "profile", None) or "qwen3-32b-2xh100")
    rate = None
    if not getattr(args, "no_speed", False):
        rate = measure_step_rate(profile, steps=int(getattr(args, "steps", 0) or 2_000))
    print_report(calibration_report(profile), rate)
    return 0


if __name__ == "__main__":  # pragma: no cover - convenience: python -m inferoute.sim.calibrate
    import sys

    ns = argparse.Namespace(profile=sys.argv[1] if len(sys.argv) > 1 else None)
    raise SystemExit(main_calibrate(ns))
