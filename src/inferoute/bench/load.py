"""Load schedules: stages of open-loop arrivals (Poisson, constant, bursty) or fixed concurrency.

Like inference-perf, a rate stage sends exactly `int(rate * duration)` requests, spaced by
seeded random (Poisson: exponential; bursty: gamma) or constant gaps, and the next stage starts
only once every request of the previous one has finished, after a pause of `interval` seconds.
A concurrency stage keeps `concurrency` requests in flight until `num_requests` have been sent
(or `duration` seconds have passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import yaml

LoadKind = Literal["poisson", "constant", "gamma", "concurrency", "trace"]

#: the 17 stages of the seed's run (llm-d inference-scheduling guide, inference-perf)
SEED_STAGES: list[dict[str, float]] = [
    {"rate": 15, "duration": 50}, {"rate": 3, "duration": 20}, {"rate": 10, "duration": 20},
    {"rate": 15, "duration": 20}, {"rate": 20, "duration": 38}, {"rate": 22, "duration": 34},
    {"rate": 25, "duration": 30}, {"rate": 30, "duration": 25}, {"rate": 35, "duration": 21},
    {"rate": 40, "duration": 38}, {"rate": 43, "duration": 36}, {"rate": 46, "duration": 33},
    {"rate": 49, "duration": 30}, {"rate": 52, "duration": 29}, {"rate": 55, "duration": 27},
    {"rate": 57, "duration": 26}, {"rate": 60, "duration": 25},
]


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage: `rate` req/s for `duration` s, or `concurrency` in flight."""

    duration: float = 0.0
    rate: float | None = None
    concurrency: int | None = None
    num_requests: int | None = None

    @property
    def count(self) -> int:
        """Requests this stage sends (concurrency stages without num_requests: unbounded)."""
        if self.num_requests is not None:
            return self.num_requests
        if self.rate is not None:
            return int(self.rate * self.duration)
        return 1 << 62

    @property
    def label(self) -> str:
        return f"rate={self.rate:g}" if self.rate is not None else f"concurrency={self.concurrency}"


@dataclass(slots=True)
class LoadSpec:
    """Stages plus how arrivals are drawn; `seed` makes arrival times repeatable."""

    stages: list[Stage]
    kind: LoadKind = "poisson"
    burstiness: float = 1.0
    interval: float = 1.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def arrivals(self, index: int) -> list[float]:
        """Send times of stage `index`, in seconds from the stage's start (rate stages only)."""
        stage = self.stages[index]
        if stage.rate is None:
            raise ValueError(f"stage {index} is a concurrency stage: it has no arrival times")
        if self.kind == "trace":  # a trace's own times (bench/traces.py), one stage
            return list(self.extra["times"]) if index == 0 else []
        n = stage.count
        if n <= 0:
            return []
        rate = stage.rate
        rng = np.random.default_rng([self.seed, index])
        if self.kind == "constant":
            gaps = np.full(n, 1.0 / rate)
        elif self.kind == "gamma":
            k = self.burstiness
            gaps = rng.gamma(k, 1.0 / (rate * k), size=n)
        else:
            gaps = rng.exponential(1.0 / rate, size=n)
        times = np.cumsum(gaps) - gaps[0]  # the first request goes at the stage's start
        return times.tolist()


def _stage(obj: Any, where: str) -> Stage:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a mapping like {{rate: 10, duration: 30}}")
    unknown = set(obj) - {"rate", "duration", "concurrency", "concurrency_level", "num_requests"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    rate = obj.get("rate")
    conc = obj.get("concurrency", obj.get("concurrency_level"))
    duration = float(obj.get("duration") or 0.0)
    num = obj.get("num_requests")
    if (rate is None) == (conc is None):
        raise ValueError(f"{where} needs exactly one of rate or concurrency")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0 or duration <= 0):
        raise ValueError(f"{where}: rate and duration must be positive numbers")
    if conc is not None:
        if not isinstance(conc, int) or conc < 1:
            raise ValueError(f"{where}: concurrency must be a positive integer")
        if num is None and duration <= 0:
            raise ValueError(f"{where}: a concurrency stage needs num_requests or duration")
    if num is not None and (not isinstance(num, int) or num < 0):
        raise ValueError(f"{where}: num_requests must be a non-negative integer")
    return Stage(duration=duration, rate=None if rate is None else float(rate),
                 concurrency=conc, num_requests=num)


def parse_stages(text: str) -> list[Stage]:
    """Stages from `seed` (the seed's 17 stages), `RATE:DURATION,...` (e.g. `5:30,10:30`),
    `cN:COUNT` for concurrency (e.g. `c8:100`), or YAML/JSON (`[{rate: 5, duration: 30}]`)."""
    text = text.strip()
    if text == "seed":
        return [_stage(s, f"stage {i}") for i, s in enumerate(SEED_STAGES)]
    if text and not text.startswith(("[", "{", "-")) and ":" in text and "{" not in text:
        stages = []
        for i, part in enumerate(p for p in text.split(",") if p.strip()):
            a, _, b = part.strip().partition(":")
            try:
                if a.startswith("c"):
                    stages.append(_stage({"concurrency": int(a[1:]), "num_requests": int(b)},
                                         f"stage {i}"))
                else:
                    stages.append(_stage({"rate": float(a), "duration": float(b)}, f"stage {i}"))
            except ValueError as exc:
                raise ValueError(f"bad stage {part!r}: {exc} (use RATE:SECONDS or cN:COUNT)") \
                    from None
        return stages
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"stages are not valid YAML: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValueError("stages must be a non-empty list")
    return [_stage(s, f"stage {i}") for i, s in enumerate(data)]
