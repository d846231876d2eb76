"""What the dashboard remembers of the traffic: the last routing decisions (with each scorer's
score for the chosen replica) and per-second throughput and TTFT over the last minutes.

A `Router` listener, so it sees exactly what the router decides; bounded: `RECENT` decisions
and `HISTORY` seconds of buckets, at most `TTFT_PER_SECOND` TTFT samples a bucket.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...core.autoscale import quantile

RECENT = 50
HISTORY = 300
TTFT_PER_SECOND = 256


@dataclass(slots=True)
class _Second:
    sec: int
    finished: int = 0
    output_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)


class DashboardFeed:
    """Router listener feeding the page's "recent requests" table and its charts."""

    def __init__(self, recent: int = RECENT, history: int = HISTORY) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.history = history
        self._seconds: deque[_Second] = deque(maxlen=history + 1)
        self._routed = 0

    # -- Router listener --------------------------------------------------------------------

    def dispatched(self, decision: Any, now: float) -> None:
        result, ep = decision.result, decision.endpoint
        profile = result.profiles[result.primary]
        self._routed += 1
        self.recent.append({
            "seq": self._routed, "at": now, "id": decision.request.request_id,
            "model": decision.request.model, "pool": decision.pool.model,
            "endpoint": ep.name, "profile": profile.profile,
            "fallback": ep is not result.target,
            "total": profile.scores.get(ep.name),
            "scores": {scorer: by_ep[ep.name] for scorer, by_ep in profile.breakdown.items()
                       if ep.name in by_ep},
            "candidates": len(profile.scores) or len(profile.targets)})

    def first_token(self, decision: Any, now: float) -> None:
        ttfts = self._bucket(now).ttfts
        if len(ttfts) < TTFT_PER_SECOND:  # a sample of the second's first tokens
            ttfts.append(now - decision.request.arrival_time)

    def finished(self, decision: Any, now: float, usage: Mapping[str, Any] | None) -> None:
        if decision.endpoint is None:
            return
        bucket = self._bucket(now)
        bucket.finished += 1
        out = (usage or {}).get("completion_tokens")
        if isinstance(out, int) and out > 0:
            bucket.output_tokens += out

    def _bucket(self, now: float) -> _Second:
        sec = math.floor(now)
        if not self._seconds or self._seconds[-1].sec < sec:
            self._seconds.append(_Second(sec))
        return self._seconds[-1]

    # -- the page's data --------------------------------------------------------------------

    def series(self, now: float, step: int = 5) -> dict[str, Any]:
        """Per `step` seconds over the last `history` seconds, oldest first: finished
        requests/s, output tokens/s and TTFT p50 / p90 (None where no first token came)."""
        n = self.history // step
        start = math.floor(now) + 1 - n * step  # the last bucket ends with the current second
        finished = [0] * n
        tokens = [0] * n
        ttfts: list[list[float]] = [[] for _ in range(n)]
        for b in self._seconds:
            i = (b.sec - start) // step
            if 0 <= i < n:
                finished[i] += b.finished
                tokens[i] += b.output_tokens
                ttfts[i].extend(b.ttfts)
        return {"step": step, "seconds": n * step,
                "requests_per_s": [f / step for f in finished],
                "output_tokens_per_s": [t / step for t in tokens],
                "ttft_p50": [quantile(v, 0.5) if v else None for v in ttfts],
                "ttft_p90": [quantile(v, 0.9) if v else None for v in ttfts]}

    def last(self, now: float) -> list[dict[str, Any]]:
        """The recent decisions, newest first, with their age in seconds."""
        return [{**d, "age": round(now - d["at"], 3)} for d in reversed(self.recent)]
