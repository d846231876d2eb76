"""Offline evaluation of the classifier and the guards on the labelled sets shipped in data/.

eval_categories.jsonl: {"category", "prompt"} lines, written separately from the category
examples (never used to build the classifier). eval_guards.jsonl: {"text", "labels"} with
labels such as "pii:credit_card" or "jailbreak" (empty = benign).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .categories import data_path
from .router import SemanticRouter


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON: {exc}") from None
    return rows


@dataclass
class CategoryReport:
    names: list[str]
    confusion: np.ndarray  # [true, predicted]
    accepted: int
    accepted_correct: int
    latencies: np.ndarray  # seconds per prompt (embedding + scoring)
    #: split name -> (correct, total), for rows that carry a "split"
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.total))

    def percentile_us(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e6)


@dataclass
class GuardScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    missed: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate_categories(router: SemanticRouter, rows: list[dict[str, Any]],
                        repeats: int = 3) -> CategoryReport:
    """Argmax accuracy over all prompts (the fallback is reported separately) and per-prompt
    latency, the best of `repeats` timed runs of the full embed + classify path."""
    clf = router.classifier
    names = clf.names
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({r["category"] for r in rows} - set(index))
    if unknown:
        raise ValueError(f"evaluation labels not among the categories: {unknown}")
    conf = np.zeros((len(names), len(names)), dtype=np.int64)
    splits: dict[str, list[int]] = {}
    accepted = accepted_ok = 0
    lat = np.empty(len(rows))
    for n, row in enumerate(rows):
        best = float("inf")
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            result = clf.classify(row["prompt"])
            best = min(best, time.perf_counter() - t0)
        lat[n] = best
        t, p = index[row["category"]], index[result.category]
        conf[t, p] += 1
        if row.get("split"):
            tally = splits.setdefault(row["split"], [0, 0])
            tally[0] += int(t == p)
            tally[1] += 1
        if result.accepted:
            accepted += 1
            accepted_ok += int(t == p)
    return CategoryReport(names, conf, accepted, accepted_ok, lat,
                          {k: (v[0], v[1]) for k, v in splits.items()})


def route_latencies(router: SemanticRouter, rows: list[dict[str, Any]]) -> np.ndarray:
    """Seconds per `router.route()` call (classification, guards, cache lookup) for each
    prompt sent as an `auto` chat request."""
    from ..core.request import parse_request

    auto = next(iter(router.auto_names))
    out = np.empty(len(rows))
    for n, row in enumerate(rows):
        req = parse_request("chat", {"model": auto, "messages": [
            {"role": "user", "content": row["prompt"]}]}, {}, request_id=f"eval-{n}")
        t0 = time.perf_counter()
        router.route(req, "eval", now=0.0)
        out[n] = time.perf_counter() - t0
    return out


def evaluate_guards(router: SemanticRouter, rows: list[dict[str, Any]],
                    split: str | None = None) -> dict[str, GuardScore]:
    """Per-label precision/recall: each PII type, "pii" (any type) and "jailbreak"; only the
    rows of one `split` when given."""
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    scores: dict[str, GuardScore] = {}
    clf = router.classifier
    for row in rows:
        text = row["text"]
        want = set(row.get("labels") or [])
        vec = clf.embed(text)
        report = router.guards.check([text], text, vec)
        got = {f"pii:{t}" for t in report.pii_types}
        if router.guards.is_jailbreak(report):
            got.add("jailbreak")
        if any(lab.startswith("pii:") for lab in got):
            got.add("pii")
        if any(lab.startswith("pii:") for lab in want):
            want.add("pii")
        for label in sorted(want | got | {"pii", "jailbreak"}):
            s = scores.setdefault(label, GuardScore())
            if label in want and label in got:
                s.tp += 1
            elif label in got:
                s.fp += 1
                s.false_alarms.append(text)
            elif label in want:
                s.fn += 1
                s.missed.append(text)
    return scores


def default_eval_paths() -> tuple[Path, Path]:
    return data_path("eval_categories.jsonl"), data_path("eval_guards.jsonl")
