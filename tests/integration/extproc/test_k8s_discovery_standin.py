"""Kubernetes discovery against a STAND-IN API server (not a real cluster; see conftest's
`StandInApiServer`): a small aiohttp app on 127.0.0.1 that speaks the list and watch protocol for
InferencePools and Pods (GET with `watch=true` streams one JSON event per line), enough for
kubernetes_asyncio's client.

The discovery runs unchanged (the real `PoolDiscovery` with a real `DataLayer`); only the API
server is pretend. What a real cluster adds and this cannot show: RBAC, TLS and tokens, the
API server's own timeouts and 410 expiry, and pods' real readiness transitions.
"""

from __future__ import annotations

import asyncio
import time

from kubernetes_asyncio import client

from inferoute.datalayer.discovery.kubernetes import PoolDiscovery
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.runtime import DataLayer

async def eventually(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_discovery_follows_pods_and_pool_changes(standin, kit):
    api, port = standin
    NS, make_pool, make_pod = kit.NS, kit.make_pool, kit.make_pod
    api.set_pool(make_pool({"app": "vllm"}))
    api.set_pod(make_pod("a", "10.0.0.1", {"app": "vllm"}, ready=True))
    api.set_pod(make_pod("b", "10.0.0.2", {"app": "vllm", "llm-d.ai/role": "decode"},
                         ready=False, created="2026-12-06T14:00:00Z"))
    cfg = parse_serving_config({"pools": [{"model": "qwen", "endpoints": []}]})
    data = DataLayer(cfg, scrape=False)
    synced: list[bool] = []

    async def on_synced(ok: bool) -> None:
        synced.append(ok)

    kclient = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    disc = PoolDiscovery(data, "qwen", pool_name="qwen", namespace=NS, on_synced=on_synced,
                         resync=2, api_client=kclient, retry=0.05,
                         wall=lambda: 1796565630.0)  # 30 s after b's creationTimestamp
    pool = data.router.pools["qwen"].pool
    names = lambda: sorted(ep.name for ep in pool)  # noqa: E731
    await disc.start()
    try:
        await eventually(lambda: synced == [True])
        assert names() == ["10.0.0.1:8000", "10.0.0.1:8001"]  # two target ports, b unready
        # b is starting: one replica per target port, asked for at its creation, 30 s before
        # discovery saw it (the autoscaling estimator counts it; no request goes there)
        starting = data.starting("qwen")
        assert len(starting) == 2 and len(set(starting)) == 1
        assert data.now() - 30 - 5 < starting[0] <= data.now() - 30
        # a pod becomes ready
        api.set_pod(make_pod("b", "10.0.0.2", {"app": "vllm", "llm-d.ai/role": "decode"},
                             ready=True))
        await eventually(lambda: len(names()) == 4)
        assert pool.get("10.0.0.2:8000").role == "decode"
        assert data.starting("qwen") == []  # ready now (no scrapes here: ready when added)
        # a pod becomes unready, another is deleted
        api.set_pod(make_pod("a", "10.0.0.1", {"app": "vllm"}, ready=False))
        await eventually(lambda: names() == ["10.0.0.2:8000", "10.0.0.2:8001"])
        assert data.starting("qwen") == []  # a was ready: down now, not starting
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


async def test_epp_process_in_kubernetes_mode(standin, kit, sim, tmp_path, monkeypatch):
    """`inferoute epp --pool-name` against the stand-in API server: the pool's one pod (IP
    127.0.0.1) serves on the two simulator ports; readiness follows discovery; a pod going
    unready empties the pool (503)."""
    import grpc
    import orjson
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    api, port = standin
    sim_ports = [int(u.rsplit(":", 1)[1]) for u in sim]
    api.set_pool(kit.make_pool({"app": "sim"}, ports=sim_ports))
    api.set_pod(kit.make_pod("sim-0", "127.0.0.1", {"app": "sim"}, ready=True))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: standin, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: standin, user: u}}]\n"
        "current-context: c\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    p = kit.start(["epp", "--pool-name", "qwen", "--pool-namespace", kit.NS, "--model",
                   kit.MODEL, "--host", "127.0.0.1", "--grpc-port", "0", "--health-port", "0",
                   "--metrics-port", "0", "--log-level", "warning"], "inferoute epp:")
    import re as _re
    m = _re.search(r"on [\d.]+:(\d+), health on :(\d+), metrics on :(\d+)", p.lines[-1])
    grpc_port, health_port, metrics_port = int(m[1]), int(m[2]), int(m[3])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            async def readiness() -> int:
                r = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))
                return r.status
            deadline = time.monotonic() + 15
            while await readiness() != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "never ready"
                await asyncio.sleep(0.05)
        await kit.wait_ready(metrics_port, n=2)
        body = orjson.dumps({"model": "anything", "max_tokens": 2,
                             "messages": [{"role": "user", "content": "hi"}]})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            s = kit.EnvoyStream(ch)
            ans = await s.request("/v1/chat/completions", body)
            assert "immediate" not in ans, ans.get("immediate")
            # any model name goes to the pool, as with the reference picker
            assert ans["headers"]["x-gateway-destination-endpoint"] in {
                f"127.0.0.1:{sp}" for sp in sim_ports}
            s.call.cancel()
            api.set_pod(kit.make_pod("sim-0", "127.0.0.1", {"app": "sim"}, ready=False))
            await eventually(lambda: True)  # let the event flow
            deadline = time.monotonic() + 10
            while True:
                ans = await kit.EnvoyStream(ch).request("/v1/chat/completions", body)
                if "immediate" in ans:
                    assert ans["immediate"].status.code == 503
                    break
                assert time.monotonic() < deadline, "pod stayed in the pool"
                await asyncio.sleep(0.05)
    finally:
        assert p.stop() == 0, "".join(p.lines)
