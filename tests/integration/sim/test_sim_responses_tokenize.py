"""`/v1/responses`, `/tokenize`, `/detokenize` and the render routes against a real
`inferoute sim` (the `openai` SDK for the Responses API, aiohttp for the rest)."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest


def _client(sim, i: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url(i) + "/v1", api_key="unused", max_retries=0)


def _post(url: str, body: object) -> tuple[int, object]:
    async def go() -> tuple[int, object]:
        async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
            return r.status, await r.json()
    return asyncio.run(go())


def test_responses_create_whole_and_streamed(sim):
    client = _client(sim)
    r = client.responses.create(model="sim-model", input="tell me a story",
                                instructions="be brief", max_output_tokens=6,
                                extra_body={"ignore_eos": True})
    assert r.object == "response" and r.status == "incomplete"
    assert len(r.output_text.split()) == 6 and not r.output_text.startswith(" ")
    # "<|system|>\nbe brief\ntell me a story\n<|assistant|>": 8 words
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (8, 6, 14)
    events = list(client.responses.create(model="sim-model", input="tell me a story",
                                          instructions="be brief", max_output_tokens=6,
                                          stream=True, extra_body={"ignore_eos": True}))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 6 and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text                      # same prompt, same words
    assert events[-1].response.usage.input_tokens == 8
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_report_cached_tokens(sim):
    client = _client(sim, 1)
    prompt = " ".join(f"resp{i}" for i in range(100))
    client.responses.create(model="sim-model", input=prompt, max_output_tokens=1)
    again = client.responses.create(model="sim-model", input=prompt, max_output_tokens=1)
    # 101 prompt tokens (with the generation prompt); all full 16-token blocks but the last
    assert again.usage.input_tokens_details.cached_tokens == 96


def test_tokenize_counts_what_chat_completions_charges_and_detokenize_reads_it_back(sim):
    msgs = [{"role": "user", "content": "how many tokens is this"}]
    status, tok = _post(sim.url() + "/tokenize", {"model": "sim-model", "messages": msgs})
    assert status == 200 and tok["max_model_len"] > 0
    chat = openai.OpenAI(base_url=sim.url() + "/v1", api_key="unused").chat.completions.create(
        model="sim-model", messages=msgs, max_tokens=1)
    assert tok["count"] == len(tok["tokens"]) == chat.usage.prompt_tokens
    status, text = _post(sim.url() + "/detokenize", {"model": "sim-model",
                                                     "tokens": tok["tokens"]})
    assert status == 200 and text["prompt"] == "<|user|> how many tokens is this <|assistant|>"


def test_rendered_token_ids_hit_the_prefix_cache_the_chat_request_filled(sim):
    msgs = [{"role": "user", "content": " ".join(f"render{i}" for i in range(70))}]
    status, gen = _post(sim.url(1) + "/v1/chat/completions/render",
                        {"model": "sim-model", "messages": msgs, "max_tokens": 2})
    assert status == 200 and gen["request_id"].startswith("chatcmpl-")
    client = _client(sim, 1)
    client.chat.completions.create(model="sim-model", messages=msgs, max_tokens=1)
    again = client.completions.create(model="sim-model", prompt=gen["token_ids"], max_tokens=1)
    assert again.usage.prompt_tokens == len(gen["token_ids"]) == 72
    assert again.usage.prompt_tokens_details.cached_tokens == 64
    status, reqs = _post(sim.url(1) + "/v1/completions/render",
                         {"model": "sim-model", "prompt": ["a b", "c"]})
    assert status == 200 and [len(r["token_ids"]) for r in reqs] == [2, 1]


@pytest.mark.parametrize("path,body,status", [
    ("/tokenize", {"model": "sim-model"}, 400),
    ("/tokenize", {"model": "nope", "prompt": "a"}, 404),
    ("/detokenize", {"tokens": ["a"]}, 400),
    ("/v1/completions/render", {"model": "sim-model", "prompt": 3}, 400),
    ("/v1/chat/completions/render", [1], 400),
    ("/v1/responses", {"model": "sim-model"}, 400),
    ("/v1/responses", {"model": "nope", "input": "x"}, 404),
])
def test_bad_bodies_get_vllms_error_shape(sim, path, status, body):
    got, err = _post(sim.url() + path, body)
    assert got == status
    assert err["error"]["code"] == status and err["error"]["message"]
