"""What the picker gains from driving the core lifecycle: answers Envoy reports (429/503
back-pressure, a 404 for the pool's own model) keep that replica out of later picks, and when
every scrape is stale it routes on its own in-flight counts (as the gateway does)."""

from __future__ import annotations

import orjson

from inferoute.core.candidates import CandidateRule
from inferoute.core.endpoint import EndpointMetrics
from inferoute.core.selection import CandidateSelector, PoolsHealth
from inferoute.extproc.protocol import EndpointPicker

from .conftest import make_router

HEADERS = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def pick(picker: EndpointPicker, msgs, now: float = 0.0):
    s = picker.stream()
    s.handle(msgs.headers_msg(HEADERS, mode=msgs.FULL_DUPLEX), now)
    out = s.handle(msgs.body_msg(BODY), now)
    return s, msgs.set_headers(out[0])["x-gateway-destination-endpoint"]


def answer(s, msgs, status: str, body: bytes = b"", now: float = 0.0, **extra: str) -> None:
    s.handle(msgs.resp_headers_msg({":status": status, "content-type": "application/json",
                                    **extra}), now)
    s.handle(msgs.resp_body_msg(body, eos=True), now)


def test_back_pressure_envoy_reports_keeps_the_replica_out_for_its_retry_after(msgs) -> None:
    router, clock = make_router(), Clock()
    picker = EndpointPicker(router, selector=CandidateSelector(router,
                                                               PoolsHealth(router, clock)))
    s, first = pick(picker, msgs)
    answer(s, msgs, "429", b'{"error": {"message": "busy"}}', **{"retry-after": "5"})
    assert [pick(picker, msgs)[1] for _ in range(3)] == [
        ep.name for ep in router.pools["m"].pool if ep.name != first] * 3
    clock.t = 5.5  # its Retry-After is over: the least-loaded picker may choose it again
    assert first in {pick(picker, msgs, 5.5)[1] for _ in range(2)}


def test_a_404_for_the_pools_model_takes_the_replica_out(msgs) -> None:
    router, clock = make_router(), Clock()
    picker = EndpointPicker(router, selector=CandidateSelector(router,
                                                               PoolsHealth(router, clock)))
    s, first = pick(picker, msgs)
    answer(s, msgs, "404", b'{"error": {"message": "The model `m` does not exist."}}')
    s2, second = pick(picker, msgs)
    assert second != first
    answer(s2, msgs, "404", b"404: Not Found")  # a missing route: the replica stays in
    # (were both out, the least-loaded picker would take the first by name again)
    assert pick(picker, msgs)[1] == second


def test_every_scrape_stale_routes_on_in_flight_counts(msgs) -> None:
    router = make_router()
    router.rule = CandidateRule(ready_window=5.0)
    for ep in router.pools["m"].pool:
        ep.metrics = EndpointMetrics(scraped_at=0.0)
    events = []
    stale = EndpointPicker(router, selector=CandidateSelector(
        router, stale_fallback=True, on_stale=lambda pool, ev: events.append(ev)))
    pick(stale, msgs, now=60.0)  # every scrape is a minute old
    assert events == ["start", "routed"]
    plain = EndpointPicker(router).stream()
    plain.handle(msgs.headers_msg(HEADERS, mode=msgs.FULL_DUPLEX), 60.0)
    (refused,) = plain.handle(msgs.body_msg(BODY), 60.0)
    assert refused.immediate_response.status.code == 503
