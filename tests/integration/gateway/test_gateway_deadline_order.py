"""Earliest deadline first through the real gateway: `inferoute serve` with admission in front
of `inferoute sim` (one tiny replica that runs one request at a time, slowed 100x), as
processes on 127.0.0.1. Requests queue in the gateway while the replica is full; one that
arrives last with an `x-slo-ttft-ms` target is released, and served, before the three
untargeted ones queued before it (arrival order would serve it last). Every step waits for a
state the gateway or the simulator reports, never for a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from inferoute.procs import free_port

POOL = "sim-model"


def _profile(tmp_path: Path) -> Path:
    """The tiny profile with a batch of one: the replica serves strictly one at a time."""
    import inferoute.sim.profiles as profiles

    data = yaml.safe_load((Path(profiles.__path__[0]) / "tiny.yaml").read_text())
    data.update(name="tiny-serial", max_num_seqs=1)
    path = tmp_path / "tiny-serial.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `check` until it holds (the timeout only bounds a broken run)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.02)


def test_a_late_request_with_a_tight_target_overtakes_the_queue(harness, web, tmp_path):
    port = free_port()
    sim = harness.start(["inferoute", "sim", "--model", POOL, "--port", str(port),
                         "--profile", str(_profile(tmp_path)), "--time-scale", "100"], port)
    gw = harness.gateway({"pools": [{"model": POOL, "endpoints": [sim.url]}], "admission": {
        # saturated as soon as a request waits inside the replica: the rest wait in the gateway
        "saturationDetector": {"queueDepthThreshold": 0},
        "flowControl": {"ttl": "600s"}}})  # (edf is the default order)

    def metric(url: str, name: str, **labels: str) -> float | None:
        return web.metric(web.get(url + "/metrics").text, name, **labels)

    # A: a long stream holds the replica's one batch slot
    conn, resp = web.open_stream(gw.url + "/v1/completions", {
        "model": POOL, "prompt": "hold", "max_tokens": 900, "stream": True})
    assert resp.status == 200 and resp.read1(65536).startswith(b"data: ")

    done: list[str] = []
    results: dict[str, tuple[int, dict]] = {}
    lock = threading.Lock()

    def send(name: str, headers: dict[str, str] | None = None) -> threading.Thread:
        def run() -> None:
            r = web.post(gw.url + "/v1/completions", timeout=120, headers=headers, json={
                "model": POOL, "prompt": f"request {name}", "max_tokens": 2})
            with lock:
                done.append(name)
                results[name] = (r.status_code, r.json())
        th = threading.Thread(target=run, name=name)
        th.start()
        return th

    # B waits inside the replica behind A; once the gateway's scrape shows it, the pool is
    # saturated and every later arrival waits in the gateway's queue
    threads = [send("B")]
    _until(lambda: metric(sim.url, "vllm:num_requests_waiting") == 1.0, "B waits in the sim")
    _until(lambda: metric(gw.url, "inferoute_endpoint_waiting_requests") == 1.0,
           "the gateway sees B waiting")

    def queued() -> float | None:
        return metric(gw.url, "inference_extension_flow_control_queue_size",
                      inference_pool=POOL, priority="0")

    for i, (name, headers) in enumerate([("C1", None), ("C2", None), ("C3", None),
                                         ("T", {"x-slo-ttft-ms": "5000"})], start=1):
        threads.append(send(name, headers))
        _until(lambda: queued() == float(i), f"{name} queued in the gateway ({i} waiting)")

    conn.close()  # A ends: B runs, then the queue is released one slot at a time
    for th in threads:
        th.join(timeout=120)
        assert not th.is_alive(), f"{th.name} never finished"
    assert all(status == 200 for status, _ in results.values()), results
    assert done[0] == "B"
    assert done[1:] == ["T", "C1", "C2", "C3"], done
