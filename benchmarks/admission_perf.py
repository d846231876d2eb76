"""Micro-benchmark of the admission core: queue ops, admission + release, SSE rewriter, limiter.

Run: python benchmarks/admission_perf.py  (prints medians of 5 runs, microseconds per operation)
"""
import time, statistics, orjson
from inferoute.core.admission.flowcontrol import FlowQueue, Ticket
from inferoute.core.admission import AdmissionController, ResponseRewriter, MemoryRateLimiter, Limits
from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.request import InferenceRequest

def med(f, reps=5):
    return statistics.median(f() for _ in range(reps))

def queue_ops():
    q = FlowQueue(max_requests=10**6, max_bytes=10**12)
    n = 100_000
    ts = [Ticket(i, "m", i % 3, f"f{i % 50}", 100, 0.0, 30.0) for i in range(n)]
    t0 = time.perf_counter()
    for t in ts: q.push(t)
    for i in range(0, n, 10): q.cancel(ts[i])
    while q.pop() is not None: pass
    return (time.perf_counter() - t0) / (n * 2.1) * 1e6

def admit_ops():
    eps = [Endpoint(f"10.0.0.{i}", 8000, metrics=EndpointMetrics(waiting=9, scraped_at=0.0)) for i in range(8)]
    pool = Pool("m", eps)
    from inferoute.core.admission import FlowControlSpec
    ctl = AdmissionController(flow=FlowControlSpec(max_requests=10**6))
    n = 20_000
    reqs = [InferenceRequest(f"r{i}", "chat", "m", {}, {}, "x", body_size=100) for i in range(n)]
    t0 = time.perf_counter()
    for r in reqs:
        ctl.classify(r); ctl.admit(r, pool, 0.01)
    for e in eps: e.metrics = EndpointMetrics(waiting=0, scraped_at=0.02)
    out = 0
    now = 0.02
    while ctl.queued():
        out += len(ctl.dispatchable(now)); now += 0.05
        for e in eps: e.metrics = EndpointMetrics(waiting=0, scraped_at=now)
    return (time.perf_counter() - t0) / n * 1e6

def sse():
    chunks = [b"data: " + orjson.dumps({"id": "x", "model": "tgt", "choices": [{"index": 0, "delta": {"content": "tok"}}]}) + b"\n\n" for _ in range(1000)]
    chunks.append(b"data: " + orjson.dumps({"model": "tgt", "choices": [], "usage": {"total_tokens": 5}}) + b"\n\n")
    res = {}
    for label, kw in (("strip", dict(strip_usage=True)), ("strip+model", dict(strip_usage=True, target_model="tgt", client_model="chat"))):
        def run():
            rw = ResponseRewriter(**kw)
            t0 = time.perf_counter()
            for c in chunks: rw.feed(c)
            rw.finish()
            return (time.perf_counter() - t0) / len(chunks) * 1e6
        res[label] = med(run)
    return res

def limiter():
    lim = MemoryRateLimiter(); lm = Limits(requests_per_minute=1e9, tokens_per_minute=1e12)
    n = 100_000
    t0 = time.perf_counter()
    for i in range(n):
        r = lim.reserve_now(f"k{i % 100}", lm, 100, i * 1e-6); lim.reconcile_now(r, 90, i * 1e-6)
    return (time.perf_counter() - t0) / n * 1e6

print(f"FlowQueue push/cancel/pop: {med(queue_ops):.2f} us/op (100k tickets, 3 bands, 50 flows)")
print(f"admit(queued)+dispatchable: {med(admit_ops, 3):.2f} us/request (20k requests, 8 endpoints)")
for k, v in sse().items(): print(f"ResponseRewriter {k}: {v:.2f} us/chunk")
print(f"MemoryRateLimiter reserve+reconcile: {med(limiter, 3):.2f} us/request")
