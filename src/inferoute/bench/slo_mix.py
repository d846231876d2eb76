"""Requests with latency objectives in a virtual run, and what came of them.

`SloMix` says which requests carry an `x-slo-ttft-ms` target and which objective (priority)
each names; the virtual benchmark (`SimConfig.slo`, bench/des.py) sends those headers.
`slo_summary` reads a run: per stage, the share of targeted requests whose first token came
within their target (SLO attainment), the goodput (requests per second that completed and met
their target if they had one), and what was shed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..core.admission.objectives import OBJECTIVE_HEADER
from ..core.slo import TTFT_HEADER
from .metrics import RequestRecord

__all__ = ["SloMix", "slo_summary"]


@dataclass(frozen=True, slots=True)
class SloMix:
    """A `share` of the requests carry a TTFT target of `ttft_ms` and name `objective`; the
    rest name `other_objective` (None: no objective header). Drawn per request index from
    `seed`, so every policy of a comparison sees the same requests targeted."""

    share: float
    ttft_ms: float
    objective: str | None = None
    other_objective: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")
        if not self.ttft_ms > 0:
            raise ValueError(f"ttft_ms must be positive, got {self.ttft_ms}")

    def headers(self, index: int) -> dict[str, str]:
        """The headers of the run's request number `index`."""
        targeted = random.Random(self.seed * 1_000_003 + index).random() < self.share
        out: dict[str, str] = {}
        objective = self.objective if targeted else self.other_objective
        if objective is not None:
            out[OBJECTIVE_HEADER] = objective
        if targeted:
            out[TTFT_HEADER] = f"{self.ttft_ms:g}"
        return out

    @staticmethod
    def target_of(headers: Mapping[str, str]) -> float | None:
        """The TTFT target (s) `headers` carry (None: none)."""
        raw = headers.get(TTFT_HEADER)
        return None if raw is None else float(raw) / 1000.0


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def slo_summary(records_by_stage: list[list[RequestRecord]],
                targets_by_stage: list[list[float | None]]) -> list[dict[str, Any]]:
    """Per stage of a run with a `SloMix` (`SimResult.records`, `SimResult.targets`):
    targeted requests, how many met their target (attainment: of all targeted, shed ones
    count as missed), goodput, shed counts by code and the TTFT of the requests without a
    target."""
    out = []
    for stage, (records, targets) in enumerate(zip(records_by_stage, targets_by_stage)):
        met = targeted = good = 0
        shed: dict[str, int] = {}
        plain_ttft: list[float] = []
        for rec, target in zip(records, targets):
            ttft = rec.ttft if rec.ok else None
            if rec.error is not None and rec.error.startswith("429 "):  # "429 code: message"
                code = rec.error[4:].split(":", 1)[0]
                shed[code] = shed.get(code, 0) + 1
            if target is None:
                good += ttft is not None
                if ttft is not None:
                    plain_ttft.append(ttft)
                continue
            targeted += 1
            if ttft is not None and ttft <= target:
                met += 1
                good += 1
        starts = [r.start for r in records]
        ends = [r.end for r in records if r.end is not None]
        span = (max(ends) - min(starts)) if starts and ends else 0.0
        out.append({"stage": stage, "requests": len(records), "targeted": targeted,
                    "met": met, "attainment": met / targeted if targeted else None,
                    "goodput": good / span if span > 0 else None, "shed": shed,
                    "untargeted_ttft_p50": _pct(plain_ttft, 50),
                    "untargeted_ttft_p90": _pct(plain_ttft, 90)})
    return out
