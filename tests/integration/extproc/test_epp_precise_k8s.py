"""`inferoute epp --pool-name ... --scheduler precise --tokenizer words --kv-events-*` (how the
Helm chart runs the picker with `precise.enabled`) against the STAND-IN Kubernetes API server of
conftest and a real `inferoute sim --kv-events` fleet: the picker subscribes to the discovered
pods' KV events and routes a prompt to the replica that cached it, though that replica was sent
the prompt directly, behind the picker's back.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import grpc
import orjson
import pytest
from aiohttp import web


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> int:
    """The first of `n` consecutive free loopback ports (the simulator takes port + i)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65536 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture
async def standin(kit):
    api = kit.StandInApiServer()
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield api, site._server.sockets[0].getsockname()[1]
    await runner.cleanup()


@pytest.fixture
def kv_sim(kit):
    """2 tiny replicas with KV events: HTTP on P, P+1; PUB on K, K+1; replay on R, R+1."""
    http, pub, replay = free_ports(2), free_ports(2), free_ports(2)
    p = kit.start(["sim", "--model", kit.MODEL, "--host", "127.0.0.1", "--port", str(http),
                   "--replicas", "2", "--profile", "tiny", "--kv-events",
                   "--kv-events-port", str(pub), "--kv-replay-port", str(replay)], "serving")
    yield http, pub, replay
    p.stop()


async def complete(session: aiohttp.ClientSession, port: int, prompt: str) -> int:
    """A completion sent straight to one replica; its cached prompt tokens."""
    async with session.post(f"http://127.0.0.1:{port}/v1/completions", json={
            "model": "sim-model", "prompt": prompt, "max_tokens": 1}) as r:
        assert r.status == 200, await r.text()
        usage = (await r.json())["usage"]
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


async def test_epp_pool_mode_routes_on_the_pods_kv_events(standin, kv_sim, kit, tmp_path,
                                                          monkeypatch):
    api, api_port = standin
    http, pub, replay = kv_sim
    api.set_pool(kit.make_pool({"app": "sim"}, ports=(http, http + 1)))
    api.set_pod(kit.make_pod("sim-0", "127.0.0.1", {"app": "sim"}, ready=True))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: s, cluster: {{server: 'http://127.0.0.1:{api_port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: c, context: {cluster: s, user: u}}]\ncurrent-context: c\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # one pod, two target ports: the KV-event ports follow each endpoint's port by an offset
    epp = kit.start_epp(extra=(
        "--pool-name", "qwen", "--pool-namespace", kit.NS, "--scheduler", "precise",
        "--tokenizer", "words", "--kv-events-pub-port-offset", str(pub - http),
        "--kv-events-replay-port-offset", str(replay - http)))
    try:
        await kit.wait_ready(epp.ports["metrics"], n=2)
        # four 96-word prompts (6 blocks of 16), placed two per replica, interleaved
        prompts = [" ".join(f"p{i}w{j}" for j in range(96)) for i in range(4)]
        holders = [http + i % 2 for i in range(4)]
        async with aiohttp.ClientSession() as session:
            for prompt, port in zip(prompts, holders):
                assert await complete(session, port, prompt) == 0  # a cold miss
            await asyncio.sleep(0.5)  # BlockStored events reach the picker (loopback: ms)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.ports['grpc']}") as ch:
                for prompt, port in zip(prompts, holders):
                    body = orjson.dumps({"model": kit.MODEL, "prompt": prompt,
                                         "max_tokens": 1})
                    stream = kit.EnvoyStream(ch)
                    ans = await stream.request("/v1/completions", body)
                    stream.call.cancel()
                    assert "immediate" not in ans, ans.get("immediate")
                    dest = ans["headers"]["x-gateway-destination-endpoint"]
                    assert dest == f"127.0.0.1:{port}", (prompt[:8], dest)
                    # and the replica picked does reuse the cached prefix
                    assert await complete(session, port, prompt) >= 80
    finally:
        rc = epp.stop()
        assert rc == 0, epp.log() if hasattr(epp, "log") else "".join(epp.lines)
