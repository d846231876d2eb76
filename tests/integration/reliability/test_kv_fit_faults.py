"""Faults while the default policy holds requests in the gateway: `inferoute`'s KV-fit release
(`kv-fit-filter`) keeps requests in a queue of its own while the replicas' caches thrash, and
releases them family by family. A replica killed while requests wait there, and clients that
leave while theirs wait, must cost no request that a healthy replica could serve, leave no
request counted or queued, and leave the pool serving."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from reliability_kit import (
    Outcome,
    assert_books_closed,
    call,
    get,
    metric_value,
    wait_ready,
)

SERVED = "x-gateway-destination-endpoint-served"
MODEL = "sim-model"
#: families of 480-token prefixes: two fit a tiny replica's 1,024 tokens of KV, so twelve in
#: turn find their prefixes evicted and the rule holds
FAMILIES = 12


def _prompt(family: int, request: int) -> str:
    """A family's prefix of three-letter words (one token each on the simulator) and a
    question of the request's own."""
    prefix = " ".join(f"{chr(97 + family % 26)}{k % 100:02d}" for k in range(480))
    question = " ".join(f"q{(request * 7 + k) % 100:02d}" for k in range(8))
    return f"{prefix} {question}"


def _body(family: int, request: int, max_tokens: int, stream: bool = True) -> dict:
    return {"model": MODEL, "prompt": _prompt(family, request), "max_tokens": max_tokens,
            "ignore_eos": True, "stream": stream}


def _gauge(url: str, metric: str, **labels: str) -> float:
    return metric_value(get(url + "/metrics").text, metric, **labels) or 0.0


def _until_holding(url: str) -> None:
    """The families in turn, one at a time, until the gateway says its rule holds."""
    for i in range(1200):
        out = call(url + "/v1/completions", _body(i % FAMILIES, i, 2, stream=False))
        assert out.ok(), (out.status, out.body)
        if _gauge(url, "inferoute_pool_kv_fit_holding", name=MODEL) == 1:
            return
    raise AssertionError("the KV-fit release never held")


def _until_queued(url: str, timeout: float = 30.0) -> float:
    """Until some request waits in the gateway's queue; how many do."""
    deadline = time.monotonic() + timeout
    while True:
        queued = _gauge(url, "inference_extension_flow_control_queue_size", priority="all")
        if queued > 0:
            return queued
        assert time.monotonic() < deadline, "no request ever waited in the gateway"
        time.sleep(0.02)


def _holding_pool(harness):  # type: ignore[no-untyped-def]
    """Two tiny replicas slowed tenfold (so that requests overlap) behind `inferoute serve`
    with its default policy, driven until the rule holds: (the gateway, the replicas)."""
    sims = [harness.sim_one(time_scale=10) for _ in range(2)]
    gw = harness.serve({"pools": [{"model": MODEL, "endpoints": [s.url for s in sims]}]},
                       "--log-level", "warning")
    wait_ready(gw.url, MODEL, 2)
    _until_holding(gw.url)
    return gw, sims


def test_a_replica_killed_while_requests_wait_in_the_gateway(harness):
    gw, sims = _holding_pool(harness)

    n = 2 * FAMILIES
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(call, gw.url + "/v1/completions", _body(i % FAMILIES, 1000 + i, 40),
                               None, 120.0) for i in range(n)]
        _until_queued(gw.url)
        page = get(gw.url + "/metrics").text
        busy = {s.url: metric_value(page, "inferoute_endpoint_in_flight_requests",
                                    endpoint=s.url.removeprefix("http://")) or 0 for s in sims}
        victim = max(sims, key=lambda s: busy[s.url])
        victim.proc.send_signal(signal.SIGKILL)
        outcomes: list[Outcome] = [f.result() for f in futures]

    name = victim.url.removeprefix("http://")
    failed = [o for o in outcomes if not o.ok()]
    assert all(o.clean() for o in outcomes), [(o.status, o.events, o.truncated)
                                              for o in outcomes if not o.clean()]
    # only streams the victim had started can fail: whatever waited went to the survivor
    assert all(o.headers.get(SERVED) == name for o in failed), [o.headers for o in failed]
    assert len(failed) <= busy[victim.url], (len(failed), busy)
    assert any(o.ok() and o.headers[SERVED] != name for o in outcomes)

    # the pool goes on with one replica, the rule still choosing what goes next
    later = [call(gw.url + "/v1/completions", _body(i % FAMILIES, 2000 + i, 4))
             for i in range(6)]
    assert all(o.ok() for o in later), [(o.status, o.error) for o in later]
    assert_books_closed(gw.url, timeout=60)


def test_clients_that_leave_while_waiting_leave_nothing_behind(harness):
    gw, _ = _holding_pool(harness)

    n = 2 * FAMILIES
    leave = threading.Event()
    outcomes: list[Outcome | None] = [None] * n

    def impatient(i: int) -> None:
        try:  # gives up after a second: most are still waiting in the gateway by then
            outcomes[i] = call(gw.url + "/v1/completions", _body(i % FAMILIES, 3000 + i, 40),
                               timeout=1.0)
        except TimeoutError:
            leave.set()

    threads = [threading.Thread(target=impatient, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    _until_queued(gw.url)
    for t in threads:
        t.join(timeout=60)
    assert leave.is_set(), "every client was answered within its second: nothing left"

    # nothing stays queued, reserved or counted for them, and the pool serves on
    assert_books_closed(gw.url, timeout=60)
    later = [call(gw.url + "/v1/completions", _body(i % FAMILIES, 4000 + i, 4))
             for i in range(6)]
    assert all(o.ok() for o in later), [(o.status, o.error) for o in later]
    assert_books_closed(gw.url, timeout=60)
