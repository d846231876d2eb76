"""LoRA affinity through `inferoute serve` in front of two simulated replicas: requests for an
adapter follow the replica this gateway has a request for it in flight on, before any scrape
shows the adapter running there (the real-engine tier met exactly that: a busy vLLM-CPU replica
whose page had not been rescraped yet tied with an idle one)."""

from __future__ import annotations

from inferoute.procs import free_port_range

SERVED = "x-gateway-destination-endpoint-served"
LORA_ONLY = {"plugins": [{"type": "lora-affinity-scorer"}, {"type": "max-score-picker"}],
             "schedulingProfiles": [{"name": "default", "plugins": [
                 {"pluginRef": "lora-affinity-scorer"}, {"pluginRef": "max-score-picker"}]}],
             "saturationDetector": {"metricsStalenessThreshold": "1h"}}


def _total(web, gw, name: str) -> float:
    page = web.get(gw.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(name + "{"))


def test_adapter_requests_follow_the_in_flight_one_before_a_rescrape(harness, web):
    base = free_port_range(2)
    sim = harness.start(["inferoute", "sim", "--model", "sim-model", "--port", str(base),
                         "--replicas", "2", "--profile", "tiny", "--max-loras", "2",
                         "--lora", "a1", "--time-scale", "20"], base)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    sim.wait_for_http(urls[1] + "/health")
    # scraped every 10 s: between two scrapes only the gateway's own bookkeeping knows where
    # the adapter runs (the pages it has show both replicas idle: 0.8, a free slot, on each)
    gw = harness.gateway({"scrapeInterval": "10s", "readyWindow": "1h", "pools": [
        {"model": "sim-model", "loraAdapters": ["a1"], "scheduler": LORA_ONLY,
         "endpoints": urls}]})
    long = {"model": "a1", "prompt": "one two three", "max_tokens": 500, "ignore_eos": True,
            "stream": True}
    for _attempt in range(10):
        while _total(web, gw, "inferoute_endpoint_in_flight_requests"):
            pass                                  # the last attempt's stream has finished
        scrapes = _total(web, gw, "inferoute_endpoint_scrapes_total")
        conn, first = web.open_stream(gw.url + "/v1/completions", long)
        try:
            assert first.status == 200
            holder = first.headers[SERVED]
            assert first.readline().startswith(b"data: ")    # it is running there
            served = []
            for i in range(6):
                r = web.post(gw.url + "/v1/completions",
                             json={"model": "a1", "prompt": f"q{i}", "max_tokens": 1})
                assert r.status_code == 200, r.text
                served.append(r.headers[SERVED])
        finally:
            conn.close()
        # scores 1 (in flight there) against 0.8 (a free slot), not a coin toss of two 0.8s
        assert served == [holder] * 6, (served, holder)
        if _total(web, gw, "inferoute_endpoint_scrapes_total") == scrapes:
            break                  # decided by the gateway's own knowledge alone: proven
    else:
        raise AssertionError("every attempt met a rescrape (the check would prove nothing)")
