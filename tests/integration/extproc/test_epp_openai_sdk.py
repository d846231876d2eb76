"""The openai SDK through Envoy's stand-in (`EnvoyFront`: HTTP in, ext_proc to `inferoute epp`,
the picked replica's response streamed back through the picker): chat and completions,
streamed and not, and the picker's own error as the SDK's typed exception."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

#: answers of exactly max_tokens tokens (the engines' own end of sequence ignored)
EXACT = {"ignore_eos": True}


@pytest.fixture
async def client(epp, kit) -> AsyncIterator[openai.AsyncOpenAI]:
    await kit.wait_ready(epp.ports["metrics"])
    front = kit.EnvoyFront(epp.ports["grpc"])
    port = await front.start()
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                             max_retries=0, timeout=60)
    yield sdk
    await sdk.close()
    await front.close()


async def test_chat_and_completions_plain_and_streamed(client: openai.AsyncOpenAI, kit) -> None:
    chat = await client.chat.completions.create(
        model=kit.MODEL, max_tokens=5, messages=[{"role": "user", "content": "hello there"}],
        extra_body=EXACT)
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    text = await client.completions.create(model=kit.MODEL, prompt="one two three",
                                           max_tokens=4, extra_body=EXACT)
    assert text.choices[0].text and text.usage is not None
    assert text.usage.completion_tokens == 4

    pieces: list[str] = []
    usage: Any = None
    stream = await client.chat.completions.create(
        model=kit.MODEL, max_tokens=6, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "tell me more"}], extra_body=EXACT)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert pieces and usage is not None and usage.completion_tokens == 6

    texts: list[str] = []
    cstream = await client.completions.create(model=kit.MODEL, prompt="four five six",
                                              max_tokens=3, stream=True)
    async for c in cstream:
        texts.extend(choice.text for choice in c.choices if choice.text)
    assert texts


async def test_the_pickers_own_error_reaches_the_sdk_typed(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(
            model="no-such-model", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(err.value)
