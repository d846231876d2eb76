"""Overload in virtual time, core only: a 2-endpoint pool (4 slots each, 1 s per request) is
offered 2x its capacity with mixed priorities. With admission on, critical requests wait little
and never fail, the servers' queues stay near the threshold and sheddable traffic is shed; with
admission off every request queues on the servers and critical waits grow with the backlog.
(`pytest -s` prints the figures.)"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from inferoute.core.admission import (AdmissionController, Admitted, FlowControlSpec,
                                      ObjectiveSpec, Objectives, OBJECTIVE_HEADER)
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.errors import TooManyRequests
from inferoute.core.request import InferenceRequest

SLOTS, SERVICE, SCRAPE = 4, 1.0, 0.05


@dataclass
class Server:
    ep: Endpoint
    running: int = 0
    waiting: list = field(default_factory=list)


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[int(0.9 * (len(xs) - 1))] if xs else float("nan")


def simulate(admission: bool, seed: int = 1, duration: float = 60.0, *,
             slots: int = SLOTS, reserve: int | str = 0, report: bool = False
             ) -> dict[str, dict]:
    """`report`: tell the controller of sends and ends, and keep each request off the servers
    it knows to be full, as the gateway's lifecycle does (without: scrapes alone)."""
    rng = random.Random(seed)
    servers = [Server(Endpoint(f"10.9.0.{i}", 8000, metrics=EndpointMetrics(scraped_at=0.0)))
               for i in range(2)]
    pool = Pool("m", [s.ep for s in servers])
    ctl = AdmissionController(
        objectives=Objectives([ObjectiveSpec(name="critical", priority=10),
                               ObjectiveSpec(name="batch", priority=-1)]),
        flow=FlowControlSpec(ttl=20.0, reserve=reserve))
    rate = 2 * len(servers) * slots / SERVICE
    events: list = []
    seq = 0

    def at(t: float, kind: str, data=None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    t = 0.0
    while t < duration:
        t += rng.expovariate(rate)
        u = rng.random()
        cls = "critical" if u < 0.2 else ("batch" if u < 0.5 else "standard")
        at(t, "arrive", cls)
    at(0.0, "scrape")
    waits: dict[str, list[float]] = {"critical": [], "standard": [], "batch": []}
    failed = {k: 0 for k in waits}
    arrived: dict[str, float] = {}
    cls_of: dict[str, str] = {}

    def send(req: InferenceRequest, now: float, room_on: frozenset[str] | None = None) -> None:
        s = min((s for s in servers if room_on is None or s.ep.name in room_on),
                key=lambda s: s.running + len(s.waiting))
        if report:
            ctl.dispatched("m", s.ep, now)
        if s.running < slots:
            s.running += 1
            waits[cls_of[req.request_id]].append(now - arrived[req.request_id])
            at(now + SERVICE, "done", s)
        else:
            s.waiting.append(req)

    n = 0
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            n += 1
            rid = f"r{n}"
            hdr = {} if data == "standard" else {OBJECTIVE_HEADER: data}
            req = InferenceRequest(rid, "chat", "m", {}, hdr, "x", body_size=200)
            arrived[rid], cls_of[rid] = now, data
            if not admission:  # no gateway-side admission at all: straight to the servers
                send(req, now)
                continue
            ctl.classify(req)
            try:
                res = ctl.admit(req, pool, now)
            except TooManyRequests:
                failed[data] += 1
                continue
            if isinstance(res, Admitted):
                send(req, now, res.room_on if report else None)
        elif kind == "done":
            s = data
            s.running -= 1
            if report:
                ctl.finished("m", s.ep, now)
            if s.waiting:
                req = s.waiting.pop(0)
                s.running += 1
                waits[cls_of[req.request_id]].append(now - arrived[req.request_id])
                at(now + SERVICE, "done", s)
        elif kind == "scrape":
            for s in servers:
                s.ep.metrics = EndpointMetrics(waiting=len(s.waiting), running=s.running,
                                               scraped_at=now)
            for ticket, _err in ctl.expire(now):
                failed[cls_of[ticket.request.request_id]] += 1
            for ticket in ctl.dispatchable(now):
                send(ticket.request, now, ticket.room_on if report else None)
            if now < duration + 30:
                at(now + SCRAPE, "scrape")
        if report and kind == "done":  # a slot freed: what waits in the gateway may go now
            for ticket in ctl.dispatchable(now):
                send(ticket.request, now, ticket.room_on)
    return {k: {"served": len(waits[k]), "failed": failed[k], "p90_wait": _p90(waits[k])}
            for k in waits}


def test_admission_protects_critical_traffic_under_2x_overload() -> None:
    on, off = simulate(True), simulate(False)
    for label, r in (("admission on", on), ("admission off", off)):
        print(f"\n{label}: " + ", ".join(
            f"{k}: served {v['served']} failed {v['failed']} p90 wait {v['p90_wait']:.2f}s"
            for k, v in r.items()))
    assert on["critical"]["failed"] == 0
    assert on["critical"]["p90_wait"] < 2 * SERVICE
    assert off["critical"]["p90_wait"] > 10 * on["critical"]["p90_wait"]
    assert on["batch"]["failed"] > 0 and off["batch"]["failed"] == 0
    # the pool stays busy: admission does not waste capacity
    served_on = sum(v["served"] for v in on.values())
    assert served_on >= 0.9 * 60 * 2 * SLOTS / SERVICE


def test_the_auto_reserve_keeps_a_slot_free_for_critical_requests() -> None:
    """With sends and ends reported (as the shells do), `reserve: auto` keeps as many slots
    free as the critical share of the completions calls for: a critical request starts at once
    where, with nothing kept, it waits for a slot behind the flood; the pool stays busy."""
    figures = {}
    for reserve in ("auto", 0):
        r = simulate(True, slots=8, reserve=reserve, report=True)
        figures[reserve] = r
        print(f"\nreserve {reserve}: " + ", ".join(
            f"{k}: served {v['served']} failed {v['failed']} p90 wait {v['p90_wait']:.3f}s"
            for k, v in r.items()))
    auto, none = figures["auto"], figures[0]
    assert auto["critical"]["failed"] == 0 and none["critical"]["failed"] == 0
    assert auto["critical"]["p90_wait"] == 0.0  # a free slot on arrival, 9 times in 10
    assert none["critical"]["p90_wait"] > 0.05 * SERVICE
    # lower priorities pay with the slots kept free: at most a quarter of the pool's work
    served = {k: sum(v["served"] for v in r.values()) for k, r in figures.items()}
    assert served["auto"] >= 0.75 * served[0]
