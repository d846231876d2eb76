"""`inferoute epp` picking among two real vLLM replicas, driven the way Envoy drives it (the
ext_proc client of tests/integration/extproc, since Envoy is not installable here): the
picker's choice is forwarded to the real engine and its response relayed back through the
stream; a shared prefix sticks, with the llm-d policy and with precise scoring fed by the real
KV-event streams; and the openai SDK, through the stand-in's HTTP side (`EnvoyFront`), gets
chat and completions, streamed and not, and the engine's own 400 as a typed error."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import aiohttp
import grpc
import openai
import orjson
import pytest
import yaml

from inferoute.procs import ChildProcess

from .conftest import BLOCK, MAX_LEN, MODEL, Engines, late_scrapes_ok, words

DEST = "x-gateway-destination-endpoint"
COMPLETIONS = "/v1/completions"


def _envoy_kit() -> ModuleType:
    """The picker tests' Envoy client (one implementation, shared by both tiers)."""
    path = Path(__file__).parents[1] / "integration" / "extproc" / "conftest.py"
    spec = importlib.util.spec_from_file_location("inferoute_tests_envoy_kit", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kit = _envoy_kit()


def start_epp(engines: Engines, *extra: str) -> ChildProcess:
    args = ["epp", "--model", MODEL, "--host", "127.0.0.1", "--grpc-port", "0",
            "--health-port", "0", "--metrics-port", "0", "--log-level", "warning", *extra]
    for url in engines.urls:
        args += ["--endpoint", url]
    p = ChildProcess([sys.executable, "-m", "inferoute", *args], name="inferoute epp",
                     unset_env=("INFEROUTE_API_KEYS",))
    line = p.wait_for_line(r"inferoute epp:", 60)
    m = re.search(r"on [\d.]+:(\d+), health on :(\d+), metrics on :(\d+)", line)
    assert m, line
    p.ports = {"grpc": int(m[1]), "metrics": int(m[3])}  # type: ignore[attr-defined]
    return p


@pytest.fixture(scope="module", params=["llm-d", "precise"])
def epp(request: pytest.FixtureRequest, engines: Engines,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    policy = tmp_path_factory.mktemp("epp") / f"{request.param}.yaml"
    policy.write_text(yaml.safe_dump(late_scrapes_ok(request.param)))
    extra: tuple[str, ...] = ("--scheduler", str(policy))
    if request.param == "precise":
        off = engines.kv_offsets()
        extra += ("--tokenizer", str(engines.model_dir),
                  "--kv-events-pub-port-offset", str(off["pubPortOffset"]),
                  "--kv-events-replay-port-offset", str(off["replayPortOffset"]))
    p = start_epp(engines, *extra)
    p.policy = request.param  # type: ignore[attr-defined]
    yield p
    p.stop()
    assert "Traceback" not in p.log(), p.log()


async def pick_and_forward(channel: grpc.aio.Channel, body: dict) -> tuple[str, bytes]:
    """One request through the picker and on to the endpoint it chose: (endpoint, relayed)."""
    s = kit.EnvoyStream(channel)
    raw = orjson.dumps(body)
    ans = await s.request(COMPLETIONS, raw)
    assert "immediate" not in ans, ans
    dest = ans["headers"][DEST]
    async with aiohttp.ClientSession() as session:
        relayed = await s.respond(session, f"http://{dest}{COMPLETIONS}", ans["body"],
                                  served=dest)
    return dest, relayed


async def wait_ready(metrics_port: int, n: int = 2) -> None:
    """Until the picker counts `n` ready endpoints (real scrapes of the real pages)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    while kit.metric(await kit.scrape(metrics_port), "inference_pool_ready_pods",
                     name=MODEL) < n:
        assert loop.time() < end, "the picker never saw both replicas ready"
        await asyncio.sleep(0.05)


async def test_picker_routes_real_requests_and_a_prefix_sticks(epp, engines: Engines):
    await wait_ready(epp.ports["metrics"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.ports['grpc']}") as ch:
        dest, relayed = await pick_and_forward(ch, {
            "model": MODEL, "prompt": words(70, 30), "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}})
        assert dest in [r.name for r in engines.replicas]
        assert b"data: [DONE]" in relayed and b'"usage"' in relayed
        system = words(71 if epp.policy == "llm-d" else 72, 4 * BLOCK)
        chosen = []
        for i in range(4):
            dest, relayed = await pick_and_forward(ch, {
                "model": MODEL, "prompt": system + " " + words(200 + i, 30), "max_tokens": 2})
            chosen.append(dest)
            usage = orjson.loads(relayed)["usage"]
            if i:
                assert usage["prompt_tokens_details"]["cached_tokens"] == 4 * BLOCK
        assert len(set(chosen)) == 1, chosen


async def test_the_openai_sdk_through_the_picker(epp, engines: Engines):
    """Chat and completions, streamed and not, as an application calls Envoy in front of the
    picker; a prompt over the engine's context is its own 400, relayed as the SDK's error."""
    await wait_ready(epp.ports["metrics"])
    front = kit.EnvoyFront(epp.ports["grpc"])
    port = await front.start()
    exact = {"ignore_eos": True}
    try:
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                      max_retries=0, timeout=120) as client:
            done = await client.completions.create(model=MODEL, prompt=words(80, 40),
                                                   max_tokens=8, extra_body=exact)
            assert done.choices[0].text.strip() and done.usage is not None
            assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (40, 8)
            chat = await client.chat.completions.create(
                model=MODEL, max_tokens=6, extra_body=exact,
                messages=[{"role": "user", "content": words(81, 10)}])
            assert chat.choices[0].message.content and chat.usage is not None
            assert chat.usage.completion_tokens == 6

            text = ""
            async for c in await client.completions.create(
                    model=MODEL, prompt=words(82, 30), max_tokens=6, stream=True,
                    extra_body=exact):
                text += "".join(choice.text for choice in c.choices)
            assert text.strip()
            pieces, usage = [], None
            async for chunk in await client.chat.completions.create(
                    model=MODEL, max_tokens=6, stream=True, extra_body=exact,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": words(83, 20)}]):
                pieces += [c.delta.content for c in chunk.choices if c.delta.content]
                usage = chunk.usage or usage
            assert "".join(pieces).strip() and usage is not None
            assert usage.completion_tokens == 6

            with pytest.raises(openai.BadRequestError) as err:
                await client.completions.create(model=MODEL, prompt=words(84, MAX_LEN + 100),
                                                max_tokens=4)
            body = err.value.body
            assert isinstance(body, dict) and str(MAX_LEN) in body.get("message", ""), body
    finally:
        await front.close()
