"""How fast is the endpoint picker? Two figures, printed:

1. Decisions per second on one core, in process: the whole request phase of one ext_proc stream
   (protobuf bytes parsed, body parsed, admission, scheduling with llm-d's weights, the core's
   default config, over N endpoints, answer built and serialised) for a long chat prompt.
2. Added latency per request over gRPC on loopback, against a real `inferoute epp` process in
   front of `inferoute sim` replicas: from sending the last body chunk to receiving the whole
   routing answer (what Envoy waits before it forwards), sequential; plus the decisions per
   second that process sustains with concurrent streams.

    python -m inferoute.tools.picker_bench [--endpoints 16] [--prompt-chars 32000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ..core.endpoint import Endpoint, EndpointMetrics, Pool
from ..core.router import ModelPool, Router
from ..core.scheduling.config import default_config
from ..core.scheduling.scheduler import Scheduler
from ..extproc.protocol import EndpointPicker

MODEL = "bench-model"
_FD = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED


def _messages(i: int, prompt_chars: int, groups: int) -> list[bytes]:
    system = f"group {i % groups}: " + ("lorem ipsum dolor sit amet " * (prompt_chars // 27))
    body = orjson.dumps({"model": MODEL, "max_tokens": 64, "messages": [
        {"role": "system", "content": system[:prompt_chars]},
        {"role": "user", "content": f"question {i}"}]})
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in (
        (":method", "POST"), (":path", "/v1/chat/completions"),
        ("content-type", "application/json"), ("content-length", str(len(body))))]
    h = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=hv)))
    h.protocol_config.request_body_mode = _FD
    h.protocol_config.response_body_mode = _FD
    out = [h.SerializeToString()]
    for j in range(0, len(body), 16384):
        out.append(pb.ProcessingRequest(request_body=pb.HttpBody(
            body=body[j:j + 16384], end_of_stream=j + 16384 >= len(body))).SerializeToString())
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_in_process(endpoints: int, prompt_chars: int, requests: int) -> None:
    eps = [Endpoint(host=f"10.0.0.{i + 1}", port=8000) for i in range(endpoints)]
    router = Router([ModelPool(MODEL, Pool(MODEL, eps), Scheduler(default_config(), seed=0))])
    picker = EndpointPicker(router)
    msgs = [_messages(i, prompt_chars, groups=max(1, requests // 5)) for i in range(requests)]
    times = []
    t_all = time.perf_counter()
    for i, stream_msgs in enumerate(msgs):
        now = i * 0.01
        for ep in eps:  # fresh metrics, as the scrapers would keep them
            ep.metrics = EndpointMetrics(waiting=i % 3, running=4, kv_usage=0.3, scraped_at=now)
        t0 = time.perf_counter()
        s = picker.stream()
        for raw in stream_msgs:
            for resp in s.handle(pb.ProcessingRequest.FromString(raw), now):
                resp.SerializeToString()
        times.append(time.perf_counter() - t0)
        s.close(now)
    total = time.perf_counter() - t_all
    print(f"in process, {endpoints} endpoints, {prompt_chars}-char prompts, {requests} requests:")
    print(f"  {requests / total:,.0f} decisions/s on one core; per request p50 "
          f"{statistics.median(times) * 1e3:.3f} ms, p99 {_pct(times, 0.99) * 1e3:.3f} ms")


async def _grpc_round_trips(port: int, prompt_chars: int, n: int, concurrency: int
                            ) -> tuple[list[float], float]:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ExternalProcessorStub(ch)
        lat: list[float] = []
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                msgs = [pb.ProcessingRequest.FromString(m)
                        for m in _messages(i, prompt_chars, groups=max(1, n // 5))]
                call = stub.Process()
                for m in msgs[:-1]:
                    await call.write(m)
                t0 = time.perf_counter()
                await call.write(msgs[-1])
                while True:  # the headers answer, then body chunks up to end_of_stream
                    r = await call.read()
                    if r.HasField("immediate_response"):
                        raise RuntimeError(f"picker refused: {r.immediate_response.body!r}")
                    if r.HasField("request_body") and \
                            r.request_body.response.body_mutation.streamed_response.end_of_stream:
                        break
                lat.append(time.perf_counter() - t0)
                call.cancel()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, n / (time.perf_counter() - t)


def bench_grpc(endpoints: int, prompt_chars: int, requests: int) -> None:
    base = 20000 + (os.getpid() * 7) % 30000
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    sim = subprocess.Popen([sys.executable, "-m", "inferoute", "sim", "--model", MODEL,
                            "--port", str(base), "--replicas", str(endpoints), "--profile",
                            "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env)
    epp = None
    try:
        assert sim.stdout is not None
        for line in sim.stdout:
            if line.startswith("serving"):
                break
        else:
            raise RuntimeError("inferoute sim did not start")
        args = [sys.executable, "-m", "inferoute", "epp", "--model", MODEL, "--host",
                "127.0.0.1", "--grpc-port", "0", "--health-port", "0", "--metrics-port", "0",
                "--log-level", "warning"]
        for i in range(endpoints):
            args += ["--endpoint", f"http://127.0.0.1:{base + i}"]
        epp = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
        assert epp.stdout is not None
        m = None
        for line in epp.stdout:
            m = re.search(r"ext_proc on [\d.]+:(\d+)", line)
            if m:
                break
        if m is None:
            raise RuntimeError("inferoute epp did not start")
        port = int(m[1])
        time.sleep(1.5)  # let every endpoint be scraped (ready)
        asyncio.run(_grpc_round_trips(port, prompt_chars, 50, 1))  # warm-up
        lat, _ = asyncio.run(_grpc_round_trips(port, prompt_chars, min(requests, 500), 1))
        _, rate = asyncio.run(_grpc_round_trips(port, prompt_chars, requests, 16))
        print(f"over gRPC on loopback, `inferoute epp` process, {endpoints} sim endpoints "
              f"scraped every 50 ms:")
        print(f"  added latency (last body chunk sent -> routing answer received), sequential: "
              f"p50 {statistics.median(lat) * 1e3:.2f} ms, p99 {_pct(lat, 0.99) * 1e3:.2f} ms")
        print(f"  {rate:,.0f} decisions/s with 16 concurrent streams (client in another "
              "process on the same 2 cores)")
    finally:
        for p in (epp, sim):
            if p is not None:
                p.terminate()
                p.wait(timeout=15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferoute.tools.picker_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", type=int, default=16)
    p.add_argument("--prompt-chars", type=int, default=32000,
                   help="system prompt length (32000 chars ~ 8k tokens)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--skip-grpc", action="store_true")
    a = p.parse_args(argv)
    bench_in_process(a.endpoints, a.prompt_chars, a.requests)
    if not a.skip_grpc:
        bench_grpc(a.endpoints, a.prompt_chars, a.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
