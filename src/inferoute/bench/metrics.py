"""Per-request records and inference-perf's per-stage summary.

Definitions (as inference-perf computes them):
- time to first token (TTFT) = first token time - send time;
- inter-token latency (ITL) = every gap between consecutive output tokens, pooled over requests
  (tokens that arrive in one streamed chunk get the chunk's time, so gaps inside a chunk are 0);
- time per output token (TPOT) = (last token time - first token time) / (n - 1), per request;
- normalized time per output token = request latency / n;
- request latency = end time - send time;
- throughput = totals / (last end time - first send time) over the stage's requests.
Summaries carry mean, min, max and the percentiles p0.1 ... p99.9 under inference-perf's key
names (`p0p1`, `p1`, ..., `p99p9`), with numpy's linear interpolation. A stage also keeps its
requests' TTFTs themselves (`samples.time_to_first_token`, sorted, at most `MAX_SAMPLES`), so a
plot can draw the real distribution rather than join the percentiles.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES: tuple[float, ...] = (0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)
#: per-request values kept per stage; more are thinned to this many evenly spaced order
#: statistics (a CDF drawn from them is exact at each kept point)
MAX_SAMPLES = 2000


def percentile_key(p: float) -> str:
    """0.1 -> 'p0p1', 50 -> 'p50', 99.9 -> 'p99p9' (inference-perf's names)."""
    return "p" + f"{p:g}".replace(".", "p")


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds on the run's clock (wall or virtual)."""

    key: str
    stage: int
    start: float
    prompt_tokens: int = 0
    end: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    #: gaps between consecutive output tokens after the first (float32: compact)
    itl: array = field(default_factory=lambda: array("f"))
    error: str | None = None
    endpoint: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    def on_tokens(self, t: float, n: int = 1) -> None:
        """`n` output tokens arrived at time `t` (one streamed chunk)."""
        if n <= 0:
            return
        if self.first_token is None:
            self.first_token = t
            if n > 1:
                self.itl.extend([0.0] * (n - 1))
        else:
            self.itl.append(t - self.last_token)  # type: ignore[operator]
            if n > 1:
                self.itl.extend([0.0] * (n - 1))
        self.last_token = t
        self.output_tokens += n

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def latency(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2 or self.first_token is None or self.last_token is None:
            return None
        return (self.last_token - self.first_token) / (self.output_tokens - 1)


def distribution(values: Sequence[float] | np.ndarray, units: str) -> dict[str, Any] | None:
    """mean/min/max and the percentiles of `values`; None when empty."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None
    pct = np.percentile(arr, PERCENTILES)
    out: dict[str, Any] = {"max": float(arr.max()), "mean": float(arr.mean()),
                           "min": float(arr.min())}
    for p, v in zip(PERCENTILES, pct):
        out[percentile_key(p)] = float(v)
    out["units"] = units
    return out


def samples(values: Sequence[float], limit: int = MAX_SAMPLES) -> list[float]:
    """`values` sorted, rounded to 0.1 ms, thinned to at most `limit` evenly spaced order
    statistics (the minimum and the maximum always kept)."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    if arr.size > limit:
        arr = arr[np.linspace(0, arr.size - 1, limit).round().astype(np.int64)]
    return [round(float(v), 4) for v in arr]


def summarize(records: Iterable[RequestRecord], **meta: Any) -> dict[str, Any]:
    """inference-perf's lifecycle report for one stage (or any set of requests)."""
    recs = list(records)
    ok = [r for r in recs if r.ok]
    failures = len(recs) - len(ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [t for t in (r.tpot for r in ok) if t is not None]
    latency = [r.latency for r in ok if r.latency is not None]  # all of them: ok has an end
    ntpot = [r.latency / r.output_tokens for r in ok
             if r.latency is not None and r.output_tokens > 0]
    itl: np.ndarray | list[float] = (
        np.concatenate([np.frombuffer(r.itl, dtype=np.float32) for r in ok]) if ok else [])
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    ends = [r.end for r in ok if r.end is not None]
    span = (max(ends) - min(r.start for r in ok)) if ends else 0.0
    starts = [r.start for r in recs]
    cached_known = [r for r in ok if r.cached_tokens is not None]
    cached = sum(r.cached_tokens for r in cached_known)  # type: ignore[misc]
    cache_prompt = sum(r.prompt_tokens for r in cached_known)

    def rate(x: float) -> float:
        return x / span if span > 0 else 0.0

    latency_block = {
        "inter_token_latency": distribution(itl, "s/token"),
        "normalized_time_per_output_token": distribution(ntpot, "s/token"),
        "request_latency": distribution(latency, "s"),
        "time_per_output_token": distribution(tpot, "s/token"),
        "time_to_first_token": distribution(ttft, "s"),
    }
    return {
        **meta,
        "samples": {"time_to_first_token": samples(ttft)},
        "metrics": {
            "latency": latency_block,
            "requests": {
                "failures": failures,
                "input_length": distribution([r.prompt_tokens for r in ok], "count"),
                "output_length": distribution([r.output_tokens for r in ok], "count"),
                "total": len(recs),
            },
            "throughput": {
                "input_tokens_per_sec": rate(prompt),
                "output_tokens_per_sec": rate(output),
                "requests_per_sec": rate(len(ok)),
                "total_tokens_per_sec": rate(prompt + output),
            },
            "time": {"duration": (max(starts) - min(starts)) if starts else 0.0,
                     "span": span},
            "prefix_cache": {
                "hit_rate": cached / cache_prompt if cache_prompt else None,
                "cached_tokens": cached if cached_known else None,
                "prompt_tokens": cache_prompt if cached_known else None,
            },
        },
    }


def headline(stage_summary: dict[str, Any]) -> dict[str, float | None]:
    """The figures of the seed's comparison table, from one stage summary."""
    m = stage_summary["metrics"]
    lat = m["latency"]

    def mean(key: str) -> float | None:
        d = lat.get(key)
        return None if d is None else d["mean"]

    def pct(key: str, p: str) -> float | None:
        d = lat.get(key)
        return None if d is None else d[p]

    return {
        "requests_per_sec": m["throughput"]["requests_per_sec"],
        "input_tokens_per_sec": m["throughput"]["input_tokens_per_sec"],
        "output_tokens_per_sec": m["throughput"]["output_tokens_per_sec"],
        "total_tokens_per_sec": m["throughput"]["total_tokens_per_sec"],
        "request_latency": mean("request_latency"),
        "ttft": mean("time_to_first_token"),
        "ttft_p90": pct("time_to_first_token", "p90"),
        "itl": mean("inter_token_latency"),
        "prefix_cache_hit_rate": m["prefix_cache"]["hit_rate"],
        "failures": m["requests"]["failures"],
    }
