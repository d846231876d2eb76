"""Seeded randomized checks: the flow queue against a naive model under random operations, and
the SSE filter under random chunking (equal to filtering the whole stream at once)."""

from __future__ import annotations

import random

import orjson
import pytest

from inferoute.core.admission import ResponseRewriter
from inferoute.core.admission.flowcontrol import FlowQueue, QueueFull, Ticket, TicketState


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ordering", ["fcfs", "edf"])
def test_flow_queue_invariants(seed: int, ordering: str) -> None:
    rng = random.Random(seed)
    q = FlowQueue(ordering=ordering, max_requests=60, max_bytes=6000)  # type: ignore[arg-type]
    live: dict[int, Ticket] = {}
    exited: set[int] = set()
    now, n = 0.0, 0
    for _ in range(3000):
        now += rng.random() * 0.1
        op = rng.random()
        if op < 0.45:
            n += 1
            t = Ticket(request=n, pool="m", priority=rng.choice([-1, 0, 0, 3]),
                       flow=rng.choice("abcd"), size=rng.randint(1, 300), enqueued_at=now,
                       deadline=now + rng.uniform(0.5, 8))
            try:
                q.push(t)
                live[n] = t
            except QueueFull:
                assert (len(live) + 1 > 60) or (sum(x.size for x in live.values()) + t.size
                                                 > 6000)
        elif op < 0.75:
            t = q.pop()
            if t is None:
                assert not live
                continue
            assert t.request in live and t.state is TicketState.DISPATCHED
            assert t.priority == max(x.priority for x in live.values())
            if ordering == "edf":
                same = [x for x in live.values() if x.priority == t.priority and x.flow == t.flow]
                assert t.deadline == min(x.deadline for x in same)
            del live[t.request]
            exited.add(t.request)
        elif op < 0.9 and live:
            t = live.pop(rng.choice(list(live)))
            assert q.cancel(t)
            exited.add(t.request)
        else:
            for t in q.expire(now):
                assert t.deadline <= now and t.request in live
                del live[t.request]
                exited.add(t.request)
            assert all(x.deadline > now for x in live.values())
        assert len(q) == len(live)
        assert q.bytes == sum(x.size for x in live.values())
    while (t := q.pop()) is not None:
        assert t.request not in exited
        del live[t.request]
    assert not live


def _stream(rng: random.Random, with_usage: bool) -> tuple[bytes, bytes]:
    """(upstream stream, what a client that did not ask for usage should get)."""
    events, visible = [], []
    for i in range(rng.randint(1, 30)):
        text = "".join(rng.choice("ab \n\u00e9\"{}") for _ in range(rng.randint(0, 12)))
        ev = b"data: " + orjson.dumps({"model": "t", "choices": [{"delta": {"content": text}}],
                                      "usage": None}) + b"\n\n"
        events.append(ev)
        visible.append(ev)
    if with_usage:
        events.append(b"data: " + orjson.dumps({"model": "t", "choices": [],
                                               "usage": {"total_tokens": 9}}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    visible.append(b"data: [DONE]\n\n")
    return b"".join(events), b"".join(visible)


@pytest.mark.parametrize("seed", range(30))
def test_sse_filter_independent_of_chunking(seed: int) -> None:
    rng = random.Random(seed)
    stream, visible = _stream(rng, with_usage=seed % 3 != 0)
    rw = ResponseRewriter(strip_usage=True)
    out, i = bytearray(), 0
    while i < len(stream):
        n = rng.randint(1, 40)
        out += rw.feed(stream[i:i + n])
        i += n
    out += rw.finish()
    assert bytes(out) == visible
    assert (rw.usage == {"total_tokens": 9}) == (seed % 3 != 0)
