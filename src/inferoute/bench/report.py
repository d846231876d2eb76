"""Benchmark reports on disk: save, load, pick a stage.

A report is `{"config": {...}, "stages": [stage summary, ...]}` (see `metrics.summarize`), saved
as JSON or YAML by file extension.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class ReportError(ValueError):
    """A report file is missing, unreadable or not a benchmark report."""


def save_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write JSON (default) or YAML (.yaml/.yml); parent folders are created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix in (".yaml", ".yml"):
        p.write_text(yaml.safe_dump(report, sort_keys=False))
    else:
        p.write_text(json.dumps(report, indent=2))
    return p


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ReportError(f"cannot read report {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if p.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ReportError(f"{p} is not a valid report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ReportError(f"{p} is not a benchmark report (no 'stages' list)")
    return data


def report_label(report: dict[str, Any], fallback: str) -> str:
    cfg = report.get("config") or {}
    return str(cfg.get("label") or cfg.get("policy") or fallback)


def pick_stage(report: dict[str, Any], *, rate: float | None = None,
               index: int | None = None) -> dict[str, Any]:
    """The stage with this index, or this rate (last such stage), or the best-throughput one."""
    stages = report["stages"]
    if not stages:
        raise ReportError("the report has no stages")
    if index is not None:
        if not -len(stages) <= index < len(stages):
            raise ReportError(f"stage {index} out of range (the report has {len(stages)})")
        return stages[index]
    if rate is not None:
        hits = [s for s in stages if s.get("rate") is not None and abs(s["rate"] - rate) < 1e-9]
        if not hits:
            raise ReportError(f"no stage at rate {rate:g}")
        return hits[-1]
    return max(stages, key=lambda s: s["metrics"]["throughput"]["output_tokens_per_sec"])
