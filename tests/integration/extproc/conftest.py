"""Real processes on loopback for the picker tests: `inferoute sim` (2 tiny replicas) and
`inferoute epp` in front of them, plus a gRPC client that plays Envoy's part of ext_proc.

Envoy itself is not installable here (not packaged by Debian), so `EnvoyStream` sends the
messages Envoy sends, in Envoy's order, and — like Envoy — forwards the request to the
endpoint the picker chose and reports the response back through the same stream.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from inferoute.procs import ChildProcess, free_port_range

MODEL = "sim-model"
FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED


class Proc(ChildProcess):
    """A child with its ready line and the ports it reported (filled in by `start_epp`)."""

    ready_line: str
    ports: dict[str, int]


def start(args: list[str], ready: str, timeout: float = 30.0) -> Proc:
    """Start `python -m inferoute ARGS` and wait for a stdout line starting with `ready`."""
    p = Proc([sys.executable, "-m", "inferoute", *args], name=f"inferoute {args[0]}")
    p.ports = {}
    p.ready_line = p.wait_for_line(re.escape(ready), timeout)
    return p


def start_epp(*endpoints: str, extra: tuple[str, ...] = ()) -> Proc:
    args = ["epp", "--model", MODEL, "--host", "127.0.0.1", "--grpc-port", "0",
            "--health-port", "0", "--metrics-port", "0", "--log-level", "warning", *extra]
    for url in endpoints:
        args += ["--endpoint", url]
    p = start(args, "inferoute epp:")
    m = re.search(r"on [\d.]+:(\d+), health on :(\d+), metrics on :(\d+)", p.ready_line)
    assert m, p.ready_line
    p.ports = {"grpc": int(m[1]), "health": int(m[2]), "metrics": int(m[3])}
    return p


@pytest.fixture(scope="package")
def sim():
    port = free_port_range(2)
    p = start(["sim", "--model", MODEL, "--port", str(port), "--replicas", "2",
               "--profile", "tiny"], "serving")
    p.ports = {"base": port}
    yield [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    p.stop(timeout=15)


@pytest.fixture(scope="package")
def epp(sim):
    p = start_epp(*sim, extra=("--max-body-bytes", "6000000"))
    yield p
    rc = p.stop(timeout=15)
    assert rc == 0, p.log()


async def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def metric(samples: dict, metric_name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, lab), v in samples.items()
               if n == metric_name and set(labels.items()) <= set(lab))


async def wait_ready(metrics_port: int, n: int = 2, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(await scrape(metrics_port), "inference_pool_ready_pods", name=MODEL) >= n:
            return
        await asyncio_sleep(0.05)
    raise AssertionError("endpoints never became ready")


async def wait_idle(metrics_port: int, timeout: float = 60.0) -> None:
    """Until the picker's last scrape of every endpoint shows nothing running or waiting (a
    scrape taken while a request ran makes its replica look busy to the load scorers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = await scrape(metrics_port)
        if (metric(samples, "inferoute_endpoint_running_requests")
                + metric(samples, "inferoute_endpoint_waiting_requests") == 0):
            return
        await asyncio_sleep(0.02)
    raise AssertionError("the endpoints never looked idle")


async def asyncio_sleep(t: float) -> None:
    import asyncio
    await asyncio.sleep(t)


def headers_msg(headers: dict[str, str], mode: int = FULL_DUPLEX,
                eos: bool = False) -> pb.ProcessingRequest:
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos))
    req.protocol_config.request_body_mode = mode
    req.protocol_config.response_body_mode = mode
    return req


class EnvoyStream:
    """One ext_proc stream, driven the way Envoy drives it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = pb_grpc.ExternalProcessorStub(channel).Process()
        #: a body write failed: the picker had answered and ended the stream meanwhile
        self.write_failed = False

    async def send(self, msg: pb.ProcessingRequest) -> None:
        await self.call.write(msg)

    async def recv(self) -> pb.ProcessingResponse:
        msg = await self.call.read()
        assert msg is not grpc.aio.EOF, "the picker closed the stream"
        return msg

    async def request(self, path: str, body: bytes, *, mode: int = FULL_DUPLEX,
                      chunk: int = 16384, extra_headers: dict[str, str] | None = None
                      ) -> dict[str, Any]:
        """Send headers and body; collect the picker's answer (or its immediate response)."""
        hdrs = {":method": "POST", ":path": path, ":authority": "gw",
                "content-type": "application/json", "content-length": str(len(body)),
                **(extra_headers or {})}
        await self.send(headers_msg(hdrs, mode))
        if mode == BUFFERED:
            first = await self.recv()
            if first.HasField("immediate_response"):
                return {"immediate": first.immediate_response}
            assert first.HasField("request_headers")
            await self.send(pb.ProcessingRequest(
                request_body=pb.HttpBody(body=body, end_of_stream=True)))
            resp = await self.recv()
            if resp.HasField("immediate_response"):
                return {"immediate": resp.immediate_response}
            common = resp.request_body.response
            return {"headers": _set_headers(common), "metadata": resp.dynamic_metadata,
                    "body": common.body_mutation.body if common.HasField("body_mutation")
                    else body, "chunks": []}
        # read while writing: the picker may answer (e.g. 413) and end the stream before the
        # whole body is written, and Envoy then stops sending. A read posted only after a
        # failed write can lose that answer to the call's local failure, so post it first.
        answer = asyncio.ensure_future(self.recv())
        for i in range(0, max(len(body), 1), chunk):
            if answer.done():
                break
            piece = body[i:i + chunk]
            try:
                await self.send(pb.ProcessingRequest(request_body=pb.HttpBody(
                    body=piece, end_of_stream=i + chunk >= len(body))))
            except Exception:  # noqa: BLE001 - grpc raises a private error type here
                # what the picker answered is read below, so a write that failed for any
                # other reason still fails the test there
                self.write_failed = True
                break
        first = await answer
        if first.HasField("immediate_response"):
            return {"immediate": first.immediate_response}
        assert first.HasField("request_headers"), first
        common = first.request_headers.response
        assert common.clear_route_cache
        chunks = []
        while True:
            r = await self.recv()
            sr = r.request_body.response.body_mutation.streamed_response
            chunks.append(sr.body)
            if sr.end_of_stream:
                break
        return {"headers": _set_headers(common), "removed": list(
            common.header_mutation.remove_headers), "metadata": first.dynamic_metadata,
            "body": b"".join(chunks), "chunks": chunks}

    async def respond(self, session: aiohttp.ClientSession, url: str, body: bytes,
                      served: str, *, mode: int = FULL_DUPLEX,
                      stop_after_chunks: int | None = None) -> bytes:
        """Forward to the chosen endpoint and report the response through the stream."""
        async with session.post(url, data=body,
                                headers={"content-type": "application/json"}) as up:
            await self.response_headers(up, served)
            return b"".join([piece async for piece in self.relay(up, mode, stop_after_chunks)])

    async def relay(self, up: aiohttp.ClientResponse, mode: int = FULL_DUPLEX,
                    stop_after_chunks: int | None = None) -> AsyncIterator[bytes]:
        """Report the endpoint's response body through the stream, chunk by chunk as it
        arrives, then its end, and yield what the picker passes back of each; with
        `stop_after_chunks`, stop after that many (the client went away mid-response)."""
        n = 0
        async for piece in up.content.iter_any():
            await self.send(pb.ProcessingRequest(response_body=pb.HttpBody(body=piece)))
            yield await self._echo(mode, len(piece))
            n += 1
            if stop_after_chunks is not None and n >= stop_after_chunks:
                return
        await self.send(pb.ProcessingRequest(response_body=pb.HttpBody(end_of_stream=True)))
        yield await self._echo(mode, 0)
        await self.call.done_writing()

    async def ended(self) -> bool:
        """Whether the picker has ended the stream: the next read is the end; or, where this
        client was still writing a body when the picker answered and closed (a large body
        refused early), the call failed here on that write, which the closed stream caused
        (on a busy machine the answer can arrive while a chunk is being sent)."""
        try:
            return await self.call.read() is grpc.aio.EOF
        except grpc.aio.AioRpcError:
            return self.write_failed

    async def response_headers(self, up: aiohttp.ClientResponse, served: str) -> None:
        """Report the endpoint's response headers (and, as Envoy's load balancer does, the
        endpoint that served) and take the picker's answer to them."""
        hv = [base_pb2.HeaderValue(key=":status", raw_value=str(up.status).encode())]
        hv += [base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode())
               for k, v in up.headers.items()]
        msg = pb.ProcessingRequest(response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=hv)))
        msg.metadata_context.filter_metadata["envoy.lb"].fields[
            "x-gateway-destination-endpoint-served"].string_value = served
        await self.send(msg)
        assert (await self.recv()).HasField("response_headers")

    async def _echo(self, mode: int, size: int) -> bytes:
        if mode != FULL_DUPLEX:
            r = await self.recv()
            assert r.HasField("response_body")
            return b""
        got = b""
        while True:
            r = await self.recv()
            got += r.response_body.response.body_mutation.streamed_response.body
            if len(got) >= size:
                return got


#: headers a proxy does not pass on (hop-by-hop), or that `EnvoyStream.request` sets itself
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te",
                            "host", "content-length", "content-type", "accept-encoding"})


class EnvoyFront:
    """Envoy's HTTP side for the stand-in: an HTTP server on loopback that takes every client
    request through one ext_proc stream to the picker (`EnvoyStream`, full duplex), forwards
    it to the endpoint the picker chose, and streams the response back through the picker to
    the client as it arrives. So an unmodified HTTP client (the openai SDK) calls a picker
    the way it calls Envoy in front of one; an immediate response (a 4xx/5xx the picker
    answers itself) reaches it with its status and body."""

    def __init__(self, grpc_port: int) -> None:
        self.grpc_port = grpc_port
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._channel is not None and self._session is not None
        body = await request.read()
        passed = {k.lower(): v for k, v in request.headers.items()
                  if k.lower() not in _NOT_FORWARDED}
        stream = EnvoyStream(self._channel)
        ans = await stream.request(request.path, body, extra_headers=passed)
        if "immediate" in ans:
            imm = ans["immediate"]
            return web.Response(status=imm.status.code, body=imm.body,
                                content_type="application/json")
        dest = ans["headers"]["x-gateway-destination-endpoint"]
        url = f"http://{dest}{request.path_qs}"
        async with self._session.post(url, data=ans["body"],
                                      headers={"content-type": "application/json"}) as up:
            await stream.response_headers(up, dest)
            out = web.StreamResponse(status=up.status)
            out.content_type = up.content_type
            await out.prepare(request)
            async for piece in stream.relay(up):
                if piece:
                    await out.write(piece)
        await out.write_eof()
        return out


def _set_headers(common: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode()
            for h in common.header_mutation.set_headers}


NS = "llm"
POOL_PATH = "/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools"


def make_pool(selector: dict[str, str], ports=(8000, 8001)) -> dict[str, Any]:
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "qwen", "namespace": NS},
            "spec": {"selector": {"matchLabels": selector},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002}}}}


def make_pod(name: str, ip: str, labels: dict[str, str], ready: bool,
             created: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels}
    if created is not None:
        meta["creationTimestamp"] = created
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": meta,
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


class StandInApiServer:
    """A STAND-IN Kubernetes API server (not a real one): pools and pods in memory; get, list
    and watch (streamed JSON lines) as kubernetes_asyncio calls them."""

    def __init__(self) -> None:
        self.rv = 1
        self.pool: dict[str, Any] | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        self.watchers: list[tuple[str, dict[str, str], asyncio.Queue]] = []
        self.requests: list[str] = []

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def _emit(self, kind: str, what: str, obj: dict[str, Any]) -> None:
        labels = obj["metadata"].get("labels") or {}
        for wkind, selector, q in self.watchers:
            if wkind == what and all(labels.get(k) == v for k, v in selector.items()):
                q.put_nowait({"type": kind, "object": obj})

    def set_pool(self, pool: dict[str, Any]) -> None:
        kind = "MODIFIED" if self.pool else "ADDED"
        self.pool = pool
        self._emit(kind, "pool", self._stamp(pool))

    def set_pod(self, pod: dict[str, Any]) -> None:
        kind = "MODIFIED" if pod["metadata"]["name"] in self.pods else "ADDED"
        self.pods[pod["metadata"]["name"]] = pod
        self._emit(kind, "pod", self._stamp(pod))

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        self._emit("DELETED", "pod", self._stamp(pod))

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(POOL_PATH + "/{name}", self.get_pool)
        app.router.add_get(POOL_PATH, self.list_pools)
        app.router.add_get(f"/api/v1/namespaces/{NS}/pods", self.list_pods)
        return app

    async def get_pool(self, req: web.Request) -> web.Response:
        self.requests.append("get pool")
        if self.pool is None or req.match_info["name"] != "qwen":
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound",
                                      "message": "not found"}, status=404)
        return web.json_response(self._stamp(self.pool))

    async def list_pools(self, req: web.Request) -> web.StreamResponse:
        assert req.query.get("fieldSelector") == "metadata.name=qwen"
        if req.query.get("watch") == "true":
            self.requests.append("watch pool")
            return await self._watch(req, "pool", {})
        items = [self._stamp(self.pool)] if self.pool else []
        return web.json_response({"kind": "InferencePoolList", "items": items,
                                  "metadata": {"resourceVersion": str(self.rv)}})

    async def list_pods(self, req: web.Request) -> web.StreamResponse:
        selector = dict(kv.split("=", 1) for kv in req.query.get("labelSelector", "").split(",")
                        if kv)
        if req.query.get("watch") == "true":
            self.requests.append(f"watch pods {req.query.get('labelSelector')}")
            return await self._watch(req, "pod", selector)
        self.requests.append(f"list pods {req.query.get('labelSelector')}")
        items = [copy.deepcopy(p) for p in self.pods.values()
                 if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        return web.json_response({"kind": "PodList", "items": items,
                                  "metadata": {"resourceVersion": str(self.rv)}})

    async def _watch(self, req: web.Request, what: str,
                     selector: dict[str, str]) -> web.StreamResponse:
        q: asyncio.Queue = asyncio.Queue()
        entry = (what, selector, q)
        self.watchers.append(entry)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(req)
        deadline = time.monotonic() + float(req.query.get("timeoutSeconds", "30"))
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    ev = await asyncio.wait_for(q.get(), left)
                except asyncio.TimeoutError:
                    break
                await resp.write(json.dumps(ev).encode() + b"\n")
        finally:
            self.watchers.remove(entry)
        await resp.write_eof()
        return resp


@pytest.fixture
async def standin():
    """A stand-in Kubernetes API server on a free loopback port: (server, port)."""
    api = StandInApiServer()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield api, site._server.sockets[0].getsockname()[1]
    await runner.cleanup()


@pytest.fixture
def kit():
    """The helpers above, for the test modules (conftest is not importable by name)."""
    from types import SimpleNamespace
    return SimpleNamespace(EnvoyStream=EnvoyStream, scrape=scrape, metric=metric,
                           wait_ready=wait_ready, wait_idle=wait_idle, headers_msg=headers_msg,
                           start_epp=start_epp,
                           MODEL=MODEL, FULL_DUPLEX=FULL_DUPLEX, BUFFERED=BUFFERED,
                           StandInApiServer=StandInApiServer, make_pool=make_pool,
                           EnvoyFront=EnvoyFront,
                           make_pod=make_pod, NS=NS, start=start)
