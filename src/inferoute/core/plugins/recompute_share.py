"""The share of returning prompt families' prefixes the servers recompute: whether the fleet's
KV caches thrash (`kv-fit-filter` holds requests back only while they do).

Two measurements, the exact one wherever it exists:

- **usage** (exact, late): a finished request's `prompt_tokens_details.cached_tokens`
  against its family's prefix. vLLM reports it only with `--enable-prompt-tokens-details`,
  and a stream carries usage only when its client asked for `stream_options.include_usage`;
  it arrives when the request ends. Each such request is a sample: the plain mean of the
  first `window`, then an exponential average over about `window`.
- **counters** (approximate, early), until the first usage sample: each server's
  `vllm:prefix_cache_hits` counter (tokens its scheduler found cached, counted when it
  schedules a request), which every vLLM exports. Between two of its scrapes, the hits it
  gained are set against the prefixes of the returning requests whose first tokens came back
  from it by the later scrape (they were scheduled by then), in two sums decayed by
  (1 - 1/window) per request; the share is 1 - hits / prefixes. Sums, not an average of each
  scrape's ratio: a scrape's hits need not line up with the requests counted beside it, and
  sums even that out where ratios clamped each to [0, 1] would not. It is an aggregate: what
  a request finds cached past its family's prefix (a conversation's history, or its own
  blocks again when it resumes after a preemption) makes up for another's recompute, so it
  reads lower than the exact share where both occur. Measured in virtual time
  (docs/benchmark.md): on `kv-overflow-4x8b` it read 0.13-0.3 where usage read 0.2-0.45, and
  beside usage it cost 5% of throughput there, so usage, once seen, is the measure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RecomputeShare", "RunningMean"]

#: per endpoint: first tokens waiting for a scrape newer than them (the oldest dropped past it)
MAX_PENDING = 4096


@dataclass(slots=True)
class _Counter:
    """One endpoint's counter: its last settled scrape, and first tokens since."""

    scraped_at: float
    hits: float
    #: (first token time, cacheable prefix tokens) of returning requests not yet settled
    pending: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_PENDING))


class RunningMean:
    """The plain mean of the first `window` values, then an exponential average over about
    `window` (so the first evidence counts at once, and old evidence fades); `start` until
    the first value."""

    __slots__ = ("count", "value", "window")

    def __init__(self, window: int, start: float = 0.0) -> None:
        self.window = window
        self.value = start
        self.count = 0

    def add(self, x: float) -> None:
        self.count += 1
        self.value += (x - self.value) / min(self.count, self.window)


class RecomputeShare:
    """The recompute share of returning families' prefixes: from usage, else server counters."""

    def __init__(self, window: int) -> None:
        self.window = window
        #: usage: the average of its samples
        self._usage = RunningMean(window)
        #: counters: decayed sums of prefix tokens that could have been cached, and the hits
        self._cacheable = 0.0
        self._hits = 0.0
        self._counters: dict[str, _Counter] = {}

    @property
    def measured(self) -> bool:
        """Whether a returning request has been measured."""
        return self._usage.count > 0 or self._cacheable > 0.0

    @property
    def value(self) -> float:
        """The share recomputed, in [0, 1] (0 before any measurement)."""
        if self._usage.count:
            return self._usage.value
        if self._cacheable <= 0.0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self._hits / self._cacheable))

    def usage(self, prefix: int, cached: int) -> None:
        """One finished request's exact sample: `cached` of its family's `prefix` tokens."""
        if prefix <= 0:
            return
        self._usage.add(max(0, prefix - cached) / prefix)

    def counted(self, endpoint: str, cacheable: int, now: float,
                scraped_at: float | None, hits: float | None) -> None:
        """A first token from `endpoint` at `now`, whose request could find `cacheable`
        prefix tokens cached (0: a new family); `hits` is the endpoint's `prefix_cache_hits`
        counter as of its last scrape at `scraped_at` (None: not exported, nothing counts)."""
        if self._usage.count or hits is None or scraped_at is None:
            return
        c = self._counters.get(endpoint)
        if c is None:  # the baseline: hits before it (this request's too, maybe) are nobody's
            self._counters[endpoint] = _Counter(scraped_at, hits)
            return
        if cacheable > 0 and now > c.scraped_at:
            c.pending.append((now, cacheable))
        if scraped_at <= c.scraped_at:
            return
        gained = hits - c.hits if hits >= c.hits else 0.0  # a restarted server: begins again
        cacheable_sum, n = 0, 0
        while c.pending and c.pending[0][0] <= scraped_at:
            cacheable_sum += c.pending.popleft()[1]
            n += 1
        c.scraped_at, c.hits = scraped_at, hits
        # with n = 0 the hits are of requests whose first tokens are still to come (or came
        # before the last scrape): they belong in the sums all the same
        keep = (1.0 - 1.0 / self.window) ** n
        self._cacheable = self._cacheable * keep + cacheable_sum
        self._hits = self._hits * keep + gained

    def forget(self, endpoint: str) -> None:
        """The endpoint left the pool: its counter baseline goes with it."""
        self._counters.pop(endpoint, None)
