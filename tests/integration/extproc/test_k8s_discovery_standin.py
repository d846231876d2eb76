"""Kubernetes discovery against a STAND-IN API server (not a real cluster): a small aiohttp app
on 127.0.0.1 that speaks the list and watch protocol for InferencePools and Pods (GET with
`watch=true` streams one JSON event per line), enough for kubernetes_asyncio's client.

The discovery runs unchanged (the real `PoolDiscovery` with a real `DataLayer`); only the API
server is pretend. What a real cluster adds and this cannot show: RBAC, TLS and tokens, the
API server's own timeouts and 410 expiry, and pods' real readiness transitions.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from inferoute.datalayer.discovery.kubernetes import PoolDiscovery
from inferoute.datalayer.discovery.static import parse_serving_config
from inferoute.datalayer.runtime import DataLayer

NS = "llm"
POOL_PATH = "/apis/inference.networking.k8s.io/v1/namespaces/llm/inferencepools"


def make_pool(selector: dict[str, str], ports=(8000, 8001)) -> dict[str, Any]:
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "qwen", "namespace": NS},
            "spec": {"selector": {"matchLabels": selector},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002}}}}


def make_pod(name: str, ip: str, labels: dict[str, str], ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


class StandInApiServer:
    """Pools and pods in memory; list, get and watch (streamed JSON lines)."""

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


async def eventually(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def standin():
    api = StandInApiServer()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield api, port
    await runner.cleanup()


async def test_discovery_follows_pods_and_pool_changes(standin):
    api, port = standin
    api.set_pool(make_pool({"app": "vllm"}))
    api.set_pod(make_pod("a", "10.0.0.1", {"app": "vllm"}, ready=True))
    api.set_pod(make_pod("b", "10.0.0.2", {"app": "vllm", "llm-d.ai/role": "decode"},
                         ready=False))
    cfg = parse_serving_config({"pools": [{"model": "qwen", "endpoints": []}]})
    data = DataLayer(cfg, scrape=False)
    synced: list[bool] = []

    async def on_synced(ok: bool) -> None:
        synced.append(ok)

    kclient = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    disc = PoolDiscovery(data, "qwen", pool_name="qwen", namespace=NS, on_synced=on_synced,
                         resync=2, api_client=kclient, retry=0.05)
    pool = data.router.pools["qwen"].pool
    names = lambda: sorted(ep.name for ep in pool)  # noqa: E731
    await disc.start()
    try:
        await eventually(lambda: synced == [True])
        assert names() == ["10.0.0.1:8000", "10.0.0.1:8001"]  # two target ports, b unready
        # a pod becomes ready
        api.set_pod(make_pod("b", "10.0.0.2", {"app": "vllm", "llm-d.ai/role": "decode"},
                             ready=True))
        await eventually(lambda: len(names()) == 4)
        assert pool.get("10.0.0.2:8000").role == "decode"
        # a pod becomes unready, another is deleted
        api.set_pod(make_pod("a", "10.0.0.1", {"app": "vllm"}, ready=False))
        await eventually(lambda: names() == ["10.0.0.2:8000", "10.0.0.2:8001"])
        api.delete_pod("b")
        await eventually(lambda: names() == [])
        # the pool's selector and ports change: its pods are re-listed with the new selector
        api.set_pod(make_pod("c", "10.0.0.3", {"app": "sglang",
                                               "llm-d.ai/engine-type": "sglang"}, ready=True))
        api.set_pool(make_pool({"app": "sglang"}, ports=(30000,)))
        await eventually(lambda: names() == ["10.0.0.3:30000"])
        assert pool.get("10.0.0.3:30000").engine == "sglang"
        assert "list pods app=sglang" in api.requests
        # the watch times out after `resync` seconds and discovery re-lists, still correct
        n_lists = sum(r.startswith("list pods") for r in api.requests)
        await eventually(lambda: sum(r.startswith("list pods") for r in api.requests) > n_lists,
                         timeout=8)
        api.set_pod(make_pod("d", "10.0.0.4", {"app": "sglang"}, ready=True))
        await eventually(lambda: names() == ["10.0.0.3:30000", "10.0.0.4:30000"])
    finally:
        await disc.stop()
        await kclient.close()
        await data.close()
