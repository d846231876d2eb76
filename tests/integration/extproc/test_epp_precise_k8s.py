"""`inferoute epp --pool-name ... --scheduler precise --tokenizer words --kv-events-*` (how the
Helm chart runs the picker with `precise.enabled`) against the STAND-IN Kubernetes API server of
conftest and a real `inferoute sim --kv-events` fleet: the picker subscribes to the discovered
pods' KV events and routes a prompt to the replica that cached it, though that replica was sent
the prompt directly, behind the picker's back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
import yaml

from inferoute.procs import free_port_range as free_ports


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


async def events_applied(session: aiohttp.ClientSession, metrics_port: int, http: int,
                         kit, timeout: float = 120.0) -> None:
    """Wait until the picker has applied every KV-event batch both replicas published (the
    simulator's /admin/stats against the picker's `inferoute_kv_event_last_sequence`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await kit.scrape(metrics_port)
        behind = []
        for port in (http, http + 1):
            async with session.get(f"http://127.0.0.1:{port}/admin/stats") as r:
                published = (await r.json())["kv_events"]["published"]
            seen = kit.metric(samples, "inferoute_kv_event_last_sequence",
                              endpoint=f"127.0.0.1:{port}")
            if seen < published - 1:
                behind.append((port, seen, published))
        if not behind:
            return
        assert loop.time() < deadline, ("KV events never reached the picker", behind)
        await asyncio.sleep(0.05)


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
            await events_applied(session, epp.ports["metrics"], http, kit)
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


# -- the Helm chart's precise values -> the picker's arguments and config ----------------------

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "inferoute"


@pytest.fixture(scope="module")
def helm() -> str:
    tools = Path(os.environ.get("INFEROUTE_TOOLS") or Path.home() / ".cache" / "inferoute-tools")
    for candidate in (os.environ.get("INFEROUTE_HELM"), str(tools / "bin" / "helm"),
                      shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("helm not found: run `python3 deploy/tools/fetch-helm.py` or set INFEROUTE_HELM")


def helm_template(helm: str, tmp_path: Path, values: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return subprocess.run([helm, "template", "qwen", str(CHART), "--namespace", "llm",
                           "-f", str(path)], check=False, capture_output=True, text=True,
                          timeout=60)


PRECISE_VALUES = {"precise": {
    "enabled": True, "tokenizerPath": "/models/qwen3",
    "tokenizerVolume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
    "tokenizerMountPath": "/models",
    "kvEvents": {"pubPort": 5557, "replayPort": 0, "pubPortOffset": -2443},
    "scorerParameters": {"speculativeTtl": "5s", "blockSize": 16}}}


def test_chart_precise_values_reach_the_picker(helm, tmp_path):
    import kubernetes_validate

    from inferoute.cli import build_parser
    from inferoute.extproc import command

    out = helm_template(helm, tmp_path, PRECISE_VALUES)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}
    dep = docs["Deployment"]
    kubernetes_validate.validate(dep, kubernetes_validate.latest_version(), strict=True)
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert {"name": "tokenizer", "mountPath": "/models", "readOnly": True} in (
        container["volumeMounts"])
    assert {"name": "tokenizer", "persistentVolumeClaim": {
        "claimName": "models", "readOnly": True}} in spec["volumes"]
    # the container's args, with the ConfigMap where the picker would find it
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for key, text in docs["ConfigMap"]["data"].items():
        (mounted / key).write_text(text)
    argv = [a.replace("/etc/inferoute", str(mounted)) for a in container["args"]]
    serving = command._serving_config(build_parser().parse_args(argv))
    pool = serving.pools[0]
    assert pool.tokenizer == "/models/qwen3"
    assert pool.kv_events == {"pubPort": 5557, "replayPort": None, "pubPortOffset": -2443}
    sched = pool.scheduler_config()
    (precise,) = [p for p in sched.plugins if p.type == "precise-prefix-cache-scorer"]
    assert precise.parameters == {"speculativeTtl": "5s", "blockSize": 16}
    assert "prefix-cache-scorer" not in {p.type for p in sched.plugins}
    (profile,) = sched.scheduling_profiles
    assert {r.plugin_ref: r.weight for r in profile.plugins}["precise-prefix-cache-scorer"] == 3


def test_chart_without_precise_renders_no_precise_args(helm, tmp_path):
    out = helm_template(helm, tmp_path, {})
    assert out.returncode == 0, out.stderr
    assert "--tokenizer" not in out.stdout and "--kv-events" not in out.stdout
    assert "precise-prefix-cache-scorer" not in out.stdout and "name: tokenizer" not in out.stdout


@pytest.mark.parametrize("values, message", [
    ({"precise": {"enabled": True, "tokenizerPath": ""}}, "tokenizerPath"),
    ({"precise": {"enabled": True},
      "schedulingConfig": {"scorers": {"prefixCacheScorer": 0}}}, "prefixCacheScorer"),
    ({"precise": {"kvEvents": {"pubPort": 70000}}}, "pubPort"),
    ({"precise": {"kvEvents": {"pubPorts": 5557}}}, "pubPorts"),
])
def test_chart_refuses_bad_precise_values(helm, tmp_path, values, message):
    out = helm_template(helm, tmp_path, values)
    assert out.returncode != 0 and message in out.stderr, out.stderr
