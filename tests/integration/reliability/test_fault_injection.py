"""Faults through a real `inferoute serve` in front of `inferoute sim` replicas: a replica killed
mid-stream, dropped connections, 503 bursts, a slow replica, stale metrics, every replica
saturated. With at least one healthy replica no accepted request fails; every client gets a
complete response or a clean OpenAI-style error (a stream: an error event, then [DONE]); the
gateway's in-flight bookkeeping returns to 0."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from inferoute.procs import free_port

from reliability_kit import (
    OBJECTIVE,
    Outcome,
    assert_books_closed,
    call,
    get,
    metric_value,
    post,
    wait_ready,
)

SERVED = "x-gateway-destination-endpoint-served"
MODEL = "sim-model"


def _body(i: int, stream: bool, max_tokens: int = 8) -> dict:
    return {"model": MODEL, "prompt": f"request {i} about topic {i % 7}",
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


def _run(url: str, n: int, *, workers: int = 4, max_tokens: int = 8,
         headers: dict[str, str] | None = None) -> list[Outcome]:
    """`n` requests, alternating streaming and not, `workers` at a time."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: call(url + "/v1/completions",
                                            _body(i, i % 2 == 0, max_tokens), headers),
                             range(n)))


def _all_ok(outcomes: list[Outcome]) -> None:
    bad = [o for o in outcomes if not o.ok()]
    assert not bad, [(o.status, o.error, o.truncated) for o in bad]


def _pool(urls: list[str], **extra: object) -> dict:
    return {"pools": [{"model": MODEL, "endpoints": urls}], **extra}


def _mid_streams(url: str, sims: list, n: int, max_tokens: int
                 ) -> tuple[list[Outcome], list[threading.Thread], Any, dict[str, int]]:
    """Start `n` streams through the gateway at `url` and return once every one has its first
    event: (outcomes, filled as they end; their threads; the replica serving the most of them;
    streams per replica, from the gateway's in-flight gauge)."""
    started = threading.Barrier(n + 1, timeout=30)
    outcomes: list[Outcome] = [None] * n  # type: ignore[list-item]

    def stream(i: int) -> None:
        outcomes[i] = call(url + "/v1/completions", _body(i, True, max_tokens=max_tokens),
                           on_first=lambda _: started.wait())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()  # every stream has its first event: all are mid-stream now
    page = get(url + "/metrics").text
    busy = {s.url: metric_value(page, "inferoute_endpoint_in_flight_requests",
                                endpoint=s.url.removeprefix("http://")) or 0 for s in sims}
    return outcomes, threads, max(sims, key=lambda s: busy[s.url]), busy


#: a replica whose metrics stop is not ready after 2 s instead of 5 s (kept well above the
#: scrape period and timeout so a busy machine does not flap the healthy replicas)
QUICK_READY = {"readyWindow": "2s"}


def test_replica_killed_mid_stream(harness):
    sims = [harness.sim_one(time_scale=10) for _ in range(3)]
    gw = harness.serve(_pool([s.url for s in sims]), "--log-level", "warning")
    wait_ready(gw.url, MODEL, 3)

    outcomes, threads, victim, busy = _mid_streams(gw.url, sims, 9, 80)
    assert busy[victim.url] >= 1, busy
    victim.proc.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(timeout=60)
    name = victim.url.removeprefix("http://")
    on_victim = [o for o in outcomes if o.headers[SERVED] == name]
    elsewhere = [o for o in outcomes if o.headers[SERVED] != name]
    assert len(on_victim) == busy[victim.url]
    for o in on_victim:  # a clean end: error event, then [DONE]; never a cut-off stream
        assert o.clean() and not o.ok(), (o.events, o.truncated)
        assert o.error["code"] == "bad_gateway"
    _all_ok(elsewhere)

    # later requests never fail: the dead replica is retried around, then not ready
    _all_ok(_run(gw.url, 16))
    assert_books_closed(gw.url)


def test_dropped_connections_are_retried_or_end_cleanly(harness):
    sims = [harness.sim_one() for _ in range(2)]
    gw = harness.serve(_pool([s.url for s in sims]), "--log-level", "error")
    wait_ready(gw.url, MODEL, 2)
    post(sims[0].url + "/admin/faults", json={"rate": 1.0, "kinds": ["drop"]})

    outcomes = _run(gw.url, 16)
    plain = [o for o in outcomes if o.events is None]
    streams = [o for o in outcomes if o.events is not None]
    _all_ok(plain)  # dropped before any byte: retried on the other replica
    name = sims[0].url.removeprefix("http://")
    assert all(o.clean() for o in streams), [(o.events, o.truncated) for o in streams]
    # a stream dropped after its first tokens cannot be replayed: a clean error instead
    assert all(not o.ok() for o in streams if o.headers[SERVED] == name)
    _all_ok([o for o in streams if o.headers[SERVED] != name])
    assert_books_closed(gw.url)


def test_503_bursts_with_one_healthy_replica(harness):
    urls = harness.sim(3)
    gw = harness.serve(_pool(urls), "--log-level", "error")
    wait_ready(gw.url, MODEL, 3)
    for url in urls[:2]:  # two of three replicas answer every request with 503
        post(url + "/admin/faults", json={"rate": 1.0, "kinds": ["503"]})
    _all_ok(_run(gw.url, 24))
    page = get(gw.url + "/metrics").text
    assert (metric_value(page, "inferoute_upstream_retries_total", pool=MODEL) or 0) >= 1
    for url in urls[:2]:  # the burst ends: the replicas are used again
        post(url + "/admin/faults", json={"rate": 0})
    _all_ok(_run(gw.url, 8))
    assert_books_closed(gw.url)


def test_slow_replica(harness):
    urls = harness.sim(2)
    gw = harness.serve(_pool(urls), "--log-level", "error")
    wait_ready(gw.url, MODEL, 2)
    post(urls[0] + "/admin/latency", json={"extra_ttft": 0.5, "time_scale": 3})
    _all_ok(_run(gw.url, 16))
    assert_books_closed(gw.url)


def test_stale_metrics_replica(harness):
    sims = harness.sim(2)
    gate = harness.metrics_gate(sims[0])
    gw = harness.serve(_pool([gate.url, sims[1]], **QUICK_READY), "--log-level", "error")
    wait_ready(gw.url, MODEL, 2)
    post(gate.url + "/gate", json={"metrics": False})
    _all_ok(_run(gw.url, 12))  # while its metrics age, and after it stops being ready
    wait_ready(gw.url, MODEL, 1)
    _all_ok(_run(gw.url, 8))
    page = get(gw.url + "/metrics").text
    assert metric_value(page, "inferoute_endpoint_ready",
                        endpoint=gate.url.removeprefix("http://")) == 0.0
    post(gate.url + "/gate", json={"metrics": True})
    wait_ready(gw.url, MODEL, 2)
    assert_books_closed(gw.url)


# real processes slowed 1000-fold, then drained at 10x: minutes on a starved host; the cap
# catches a hang, not slowness
@pytest.mark.timeout(600)
def test_all_replicas_saturated(harness):
    """Every replica full and the gateway's queue holding the rest: sheddable requests get 429
    with Retry-After, every other request completes. The replicas are slowed 1000-fold while
    the state builds (no request can finish, however slowly this machine sends them), then
    run at 10x once the shedding has been seen, so the queue drains."""
    urls = harness.sim(2)
    admission = {"objectives": [{"name": "critical", "priority": 10},
                                {"name": "standard", "priority": 0},
                                {"name": "sheddable", "priority": -1}],
                 "flowControl": {"ttl": "300s", "retryAfter": "1s"},
                 # a starved host scrapes late: this tests shedding, not staleness
                 "saturationDetector": {"metricsStalenessThreshold": "2s"}}
    gw = harness.serve(_pool(urls, admission=admission), "--log-level", "error")
    wait_ready(gw.url, MODEL, 2)

    def scale(factor: float) -> None:
        for url in urls:
            post(url + "/admin/latency", json={"time_scale": factor})

    def one(i: int, objective: str) -> tuple[str, Outcome]:
        return objective, call(gw.url + "/v1/completions", _body(i, i % 2 == 0, 30),
                               {OBJECTIVE: objective}, timeout=180)

    def wait_for(what: str, done) -> None:  # a state, bounded; polled, never a fixed wait
        deadline = time.monotonic() + 90
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    def queued() -> float:
        return metric_value(get(gw.url + "/metrics").text,
                            "inference_extension_flow_control_queue_size",
                            priority="all") or 0

    scale(1000)
    with ThreadPoolExecutor(48) as pool:
        try:
            fill = [pool.submit(one, i, "standard") for i in range(32)]  # 2 x 8 seqs + queues
            # saturated: the gateway queues, or every replica's own queue is past the
            # detector's default depth (5; which of the two comes first depends on when the
            # gateway's scrapes saw the replicas fill)
            wait_for("the pool never saturated", lambda: queued() > 0 or all(
                (metric_value(get(u + "/metrics").text, "vllm:num_requests_waiting") or 0) >= 5
                for u in urls))
            # the backlog must outlive a scrape to count as saturation (the replicas' own queues
            # stay short): wait until every replica was scraped again since (two scrapes started)
            seen = _scrapes_started(gw.url)
            wait_for("the replicas were not scraped again", lambda: min(
                n - seen.get(ep, 0) for ep, n in _scrapes_started(gw.url).items()) >= 2)
            mixed = [pool.submit(one, 100 + i, ("critical", "sheddable")[i % 2])
                     for i in range(16)]
            wait_for("nothing was shed", lambda: any(f.done() for f in mixed[1::2]))
        finally:
            scale(10)  # the queue drains (and a failed wait leaves nothing frozen behind it)
        results = [f.result() for f in fill + mixed]

    for objective, o in results:
        assert o.clean(), (objective, o.status, o.events, o.body)
        if objective == "sheddable" and not o.ok():
            assert o.status == 429 and o.headers.get("retry-after") == "1"
            assert o.error["code"] == "overloaded"
        else:
            assert o.ok(), (objective, o.status, o.error)
    assert any(not o.ok() for obj, o in results if obj == "sheddable"), "nothing was shed"
    assert_books_closed(gw.url)


def _scrapes_started(url: str) -> dict[str, float]:
    """endpoint -> scrapes of it the gateway has started (`inferoute_endpoint_scrapes_total`)."""
    out = {}
    for line in get(url + "/metrics").text.splitlines():
        if line.startswith("inferoute_endpoint_scrapes_total{"):
            ep = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[ep] = float(line.rsplit(" ", 1)[1])
    return out


def test_frozen_replica_ends_in_flight_requests_cleanly(harness):
    """SIGSTOP: the replica accepts connections but never answers, and its metrics go stale.
    Requests already on it end at `readTimeout` with a clean error (a stream: error event and
    [DONE]); once it is not ready, no request goes there and none fails."""
    sims = [harness.sim_one(time_scale=5) for _ in range(3)]
    gw = harness.serve(_pool([s.url for s in sims], upstream={"readTimeout": "1.5s"},
                             **QUICK_READY),
                       "--log-level", "error")
    wait_ready(gw.url, MODEL, 3)
    outcomes, threads, victim, _ = _mid_streams(gw.url, sims, 9, 60)
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        for t in threads:
            t.join(timeout=60)
        name = victim.url.removeprefix("http://")
        for o in outcomes:
            assert o.clean(), (o.events, o.truncated)
            if o.headers[SERVED] == name:  # idle past readTimeout: a clean 504 event
                assert not o.ok() and o.error["code"] == "gateway_timeout", o.error
            else:
                assert o.ok()
        wait_ready(gw.url, MODEL, 2)
        _all_ok(_run(gw.url, 12))
        assert_books_closed(gw.url)
    finally:
        victim.proc.send_signal(signal.SIGCONT)


def test_three_of_four_separate_replicas_failing(harness):
    """Four replica processes, three answering every request with 429, 500 or 503: every
    request succeeds on the fourth (each candidate is tried; 429/503 are backed off)."""
    sims = [harness.sim_one() for _ in range(4)]
    gw = harness.serve(_pool([s.url for s in sims]), "--log-level", "error")
    wait_ready(gw.url, MODEL, 4)
    for s in sims[:3]:
        post(s.url + "/admin/faults", json={"rate": 1.0, "kinds": ["429", "500", "503"]})
    _all_ok(_run(gw.url, 40))
    assert_books_closed(gw.url)


def test_wrong_model_replica_process(harness):
    """A replica serving another model is found from its /v1/models and gets no request."""
    good = harness.sim_one()
    port = free_port()
    wrong = harness.start(["inferoute", "sim", "--model", "other-model", "--port", str(port),
                           "--profile", "tiny"], port)
    gw = harness.serve(_pool([good.url, wrong.url]), "--log-level", "warning")
    deadline = time.monotonic() + 20
    while "problems" not in (ready := get(gw.url + "/ready").json()):
        assert time.monotonic() < deadline, ready
        time.sleep(0.05)
    assert ready["ready_endpoints"] == {MODEL: 1}
    assert ready["problems"][MODEL] == [
        f"{wrong.url.removeprefix('http://')} serves 'other-model', not '{MODEL}'"]
    outcomes = _run(gw.url, 16)
    _all_ok(outcomes)
    assert {o.headers[SERVED] for o in outcomes} == {good.url.removeprefix("http://")}
    assert_books_closed(gw.url)
