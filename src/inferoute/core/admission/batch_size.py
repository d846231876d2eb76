"""`BatchSize`: what the dispatch budget learns of one replica's batch size from its scrapes.

A model server with continuous batching takes a waiting request into its batch at its next
step unless one of three things holds it back, and a scrape that shows requests waiting does
not say which:

(a) the step's token budget went to other prefills: the request waits a step or two and goes
    in; the batch is not full. On `mixed` 32% of scrapes show this, from the first half
    second on, while the replicas run 2-6 requests (later 199-256): taking those as the batch
    size made the budget send requests away from the replica that holds their prefix;
(b) the batch holds as many sequences as the server allows (vLLM's `max_num_seqs`, which no
    page of its /metrics carries: `vllm:cache_config_info` has the cache's settings only):
    requests keep waiting scrape after scrape while the running count sits at the same
    number, the most ever seen, with KV to spare;
(c) the KV cache is full: the waiting requests do not fit its free blocks.

So the batch size is learned from (c) at once and from (b) once it persists: `persistence`
consecutive scrapes with requests waiting, each showing the same running count and that count
the most seen since the last revision. Transient waits (a) do not last that long at an
unchanging peak (a wait for a step's token budget ends at the next step or two, and the
running count moves as requests come and go).

The two bounds change differently. A sequence limit is a number: what was learned from (b) is
forgotten the moment a scrape shows more requests running than it (the wait was wrongly taken
for (b)), and the next evidence learns it anew. A full KV cache holds as many requests as fit
now, which falls as the running ones grow by their output and rises when shorter ones replace
them: (c) sets the batch size to the running count of that scrape, lower or higher than
before, and a scrape that shows more running raises it to that count. The most ever seen
running is no batch size under a full KV: on `benchmarks/edf.py --stages 7:60,9:60` the
replicas were seen at 108-110 once, then ran 101-104 with their KV full, and a budget that
kept 108-110 let 4-7 requests more into each model server's own queue, served in arrival
order, past the gateway's deadline order (docs/benchmark.md, "Admission's own cost").

Whether the waiting requests fit (c) is judged from the page: each is taken to need the mean
share of KV of the requests running (`waiting x usage / running > 1 - usage`), or, when the
page carries the cache's size (`num_blocks`, `block_size`) and this gateway has requests in
flight there, the mean prompt of those in blocks (a request that shares no prefix needs its
whole prompt's blocks).
"""

from __future__ import annotations

from ..endpoint import Endpoint

__all__ = ["BatchSize"]


class BatchSize:
    """One endpoint's batch size as learned from its scrapes (see the module docstring)."""

    __slots__ = ("_at", "by_kv", "hits", "learned", "peak", "persistence", "streak")

    def __init__(self, persistence: int = 10) -> None:
        #: scrapes with requests waiting and the running count at its peak that make a
        #: sequence-bound batch (3 in 4 of a run of waiting scrapes)
        self.persistence = persistence
        #: the batch size learned (0: not known)
        self.learned = 0
        #: what was learned is a full KV cache's batch (c), not a sequence limit's (b)
        self.by_kv = False
        #: the most requests seen running since the last revision
        self.peak = 0
        #: consecutive scrapes with requests waiting (none running more than `peak`), and
        #: those of them with the running count at `peak`
        self.streak = 0
        self.hits = 0
        self._at: float | None = None

    def value(self) -> int | None:
        """The batch size, once learned (None: not known)."""
        return self.learned or None

    def note(self, ep: Endpoint) -> None:
        """Learn from the endpoint's last scrape (each scrape once)."""
        m = ep.metrics
        at = m.scraped_at
        if at is None or at == self._at:
            return
        self._at = at
        running = m.running
        if self.learned and running > self.learned:  # more run than the batch learned:
            # a full KV holds more now (shorter requests); a sequence limit was not one
            self.learned = running if self.by_kv else 0
        if running > self.peak:
            self.peak = running
            self.streak = self.hits = 0
        if m.waiting <= 0 or running <= 0:
            self.streak = self.hits = 0
            return
        if _kv_bound(ep):  # (c): the batch is what the full KV holds now
            self.learned = running
            self.by_kv = True
            self.streak = self.hits = 0
            return
        # (b) or (a): a batch bound by sequences keeps running at its peak while requests wait;
        # a wait for the token budget is short and the running count moves
        self.streak += 1
        self.hits += running == self.peak
        if self.hits >= self.persistence and 4 * self.hits >= 3 * self.streak:  # (b)
            self.learned = max(self.learned, running)
            self.by_kv = False


def _kv_bound(ep: Endpoint) -> bool:
    """The requests waiting on `ep` do not fit its free KV cache, by its last scrape."""
    m = ep.metrics
    usage = min(max(m.kv_usage, 0.0), 1.0)
    free = 1.0 - usage
    if m.waiting * usage > free * m.running:  # each needs the running requests' mean share
        return True
    n = ep.in_flight_requests
    if not (m.num_blocks and m.block_size and n > 0):
        return False
    prompt_blocks = ep.in_flight_tokens / n / m.block_size
    return m.waiting * prompt_blocks > free * m.num_blocks
