"""`inferoute epp` with its default policy (`inferoute`) behind Envoy's stand-in: where prompt
families overflow the replicas' KV caches, the picker holds requests (their ext_proc streams
wait for a routing answer) and releases them family by family; every one is then served."""

from __future__ import annotations

import asyncio
import time

import openai

from inferoute.procs import free_port_range

#: families of 480-token prefixes: two fit a tiny replica's 1,024 tokens of KV, so twelve in
#: turn find their prefixes evicted and the rule holds
FAMILIES = 12


def _prompt(family: int, request: int) -> str:
    prefix = " ".join(f"{chr(97 + family % 26)}{k % 100:02d}" for k in range(480))
    question = " ".join(f"q{(request * 7 + k) % 100:02d}" for k in range(8))
    return f"{prefix} {question}"


async def test_the_picker_holds_and_releases_by_family(kit) -> None:
    base = free_port_range(2)  # slowed tenfold, so that requests overlap
    sim = kit.start(["sim", "--model", kit.MODEL, "--port", str(base), "--replicas", "2",
                     "--profile", "tiny", "--time-scale", "10"], "serving")
    epp = kit.start_epp(f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}")
    front = kit.EnvoyFront(epp.ports["grpc"])
    try:
        await kit.wait_ready(epp.ports["metrics"])
        port = await front.start()
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                    max_retries=0, timeout=120)

        async def picker(name: str) -> float:
            return kit.metric(await kit.scrape(epp.ports["metrics"]), name)

        for i in range(1200):  # the families in turn until the picker's rule holds
            out = await client.completions.create(model=kit.MODEL, max_tokens=2,
                                                  prompt=_prompt(i % FAMILIES, i))
            assert out.choices[0].text
            if await picker("inferoute_pool_kv_fit_holding") == 1:
                break
        assert await picker("inferoute_pool_kv_fit_holding") == 1, "the rule never held"

        async def ask(i: int) -> str:
            stream = await client.completions.create(
                model=kit.MODEL, max_tokens=30, stream=True, prompt=_prompt(i % FAMILIES, 100 + i),
                extra_body={"ignore_eos": True})
            return "".join([c.choices[0].text async for c in stream if c.choices])

        asks = [asyncio.create_task(ask(i)) for i in range(2 * FAMILIES)]
        deadline = time.monotonic() + 60
        queued = 0.0
        while not queued and not all(t.done() for t in asks):
            queued = await picker("inference_extension_flow_control_queue_size")
            assert time.monotonic() < deadline, "no request ever waited in the picker"
            await asyncio.sleep(0.02)
        assert queued > 0  # the picker held some while others ran
        texts = await asyncio.gather(*asks)
        assert all(texts), texts
        # nothing waits any more, in any priority band (each band's series and "all")
        assert await picker("inference_extension_flow_control_queue_size") == 0
        await client.close()
    finally:
        await front.close()
        assert epp.stop(timeout=15) == 0, epp.log()
        sim.stop(timeout=15)
