"""What a request's decode shares its replica with: the desired-replicas estimator's measure of
a decode token's cost.

A replica's step computes every running request's next token (its weights are read once per
step, each decode reads its own context's KV cache) and the prefill chunks that fit the step's
budget. So a request's decode time is, over its steps, a fixed cost per step, a cost per
request decoding beside it, and the prefills computed meanwhile:

    e2e - TTFT  =  (O - 1) (c0 + delta n)  +  b P

n the mean number of requests decoding on the replica during its decode (itself included), P
the uncached prompt tokens whose prefills completed there meanwhile, b the prefill's seconds
per token. `DecodeTracker` measures n and P from what the router sees (each request's replica,
first token and end); the estimator fits delta, the step time one more running request adds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DecodeMark", "DecodeTracker"]


@dataclass(frozen=True, slots=True)
class DecodeMark:
    """A request's replica's counters at its first token."""

    endpoint: str
    at: float
    decoders: float
    prefilled: float


class DecodeTracker:
    """Per endpoint: the requests decoding on it, the integral of their count over time and the
    uncached prompt tokens whose prefill completed there (at their first tokens). An endpoint's
    state is dropped when nothing decodes on it (no mark can need it then)."""

    def __init__(self) -> None:
        #: endpoint -> [decoding, integral of decoding over time, at, prefilled tokens]
        self._state: dict[str, list[float]] = {}

    def _advance(self, endpoint: str, now: float) -> list[float]:
        st = self._state.get(endpoint)
        if st is None:
            st = self._state[endpoint] = [0.0, 0.0, now, 0.0]
        st[1] += st[0] * max(0.0, now - st[2])
        st[2] = max(st[2], now)
        return st

    def started(self, endpoint: str, now: float, uncached: float) -> DecodeMark:
        """A request's first token on `endpoint`: its prefill of `uncached` tokens is over and
        it decodes from now on."""
        st = self._advance(endpoint, now)
        st[3] += max(0.0, uncached)
        st[0] += 1
        return DecodeMark(endpoint, now, st[1], st[3])

    def ended(self, mark: DecodeMark, now: float) -> tuple[float, float] | None:
        """The request of `mark` is over: (the mean count of requests that decoded on its
        replica from its first token to now, itself included; the uncached prompt tokens whose
        prefills completed there meanwhile), None if no time passed."""
        st = self._advance(mark.endpoint, now)
        st[0] -= 1
        span = now - mark.at
        result = ((st[1] - mark.decoders) / span, st[3] - mark.prefilled) if span > 0 else None
        if st[0] <= 0:
            del self._state[mark.endpoint]
        return result

    def decoding(self, endpoint: str) -> int:
        """Requests decoding on `endpoint` now."""
        st = self._state.get(endpoint)
        return int(st[0]) if st else 0
