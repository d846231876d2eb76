"""vLLM's /tokenize, /detokenize and render endpoints on the simulator (pure parts)."""

from __future__ import annotations

import orjson
import pytest

from inferoute.core.errors import BadRequest
from inferoute.sim import tokenizer
from inferoute.sim.openai_api import DEFAULT_COMPLETION_MAX_TOKENS, parse_sim_request
from inferoute.sim.tokenize_api import detokenize, render_chat, render_completion, tokenize

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def test_tokenize_completion_form():
    model, out = tokenize(orjson.dumps({"model": "m", "prompt": "a b  c",
                                        "add_special_tokens": True}), 1024)
    assert model == "m"
    assert out == {"count": 3, "max_model_len": 1024, "tokens": tokenizer.encode("a b c"),
                   "token_strs": None}
    assert tokenize({"prompt": "x y", "return_token_strs": True}, 8)[1]["token_strs"] == \
        ["x", "y"]
    assert tokenize({"prompt": "x"}, 8)[0] is None   # model may be omitted, as on vLLM


def test_tokenize_chat_form_gives_the_ids_the_engine_caches():
    _, out = tokenize({"model": "m", "messages": MSGS}, 1024)
    served = parse_sim_request("chat", {"model": "m", "messages": MSGS})
    assert out["tokens"] == tokenizer.encode(served.prompt_text) and out["count"] == 7
    _, bare = tokenize({"model": "m", "messages": MSGS, "add_generation_prompt": False}, 1024)
    assert bare["tokens"] == out["tokens"][:-1]


def test_detokenize_round_trips_encoded_words_and_output_vocabulary():
    ids = tokenize({"prompt": "never seen before"}, 64)[1]["tokens"]
    assert detokenize({"model": "m", "tokens": ids}) == ("m", {"prompt": "never seen before"})
    out_ids = tokenizer.output_token_ids(tokenizer.output_key_seed(0, "k"), 0, 5)
    assert detokenize({"tokens": out_ids})[1]["prompt"] == \
        " ".join(tokenizer.output_words(0, "k", 5))
    # an id the simulator never produced names no word: dropped, like vLLM's out-of-vocab ids
    assert detokenize({"tokens": [ids[0], 7, ids[1]]})[1]["prompt"] == "never seen"


def test_render_completion_one_generate_request_per_prompt():
    model, reqs = render_completion({"model": "m", "prompt": ["a b", "c"], "max_tokens": 3,
                                     "stream": True, "ignore_eos": True}, "x1", 1024)
    assert model == "m"
    assert [r["request_id"] for r in reqs] == ["cmpl-x1-0", "cmpl-x1-1"]
    assert [r["token_ids"] for r in reqs] == [tokenizer.encode("a b"), tokenizer.encode("c")]
    sp = reqs[0]["sampling_params"]
    assert (sp["max_tokens"], sp["ignore_eos"], sp["temperature"]) == (3, True, 1.0)
    assert reqs[0]["stream"] is True and reqs[0]["model"] == "m"
    _, one = render_completion({"model": "m", "prompt": [5, 6, 7]}, "x2", 1024)
    assert [(r["request_id"], r["token_ids"]) for r in one] == [("cmpl-x2", [5, 6, 7])]
    assert one[0]["sampling_params"]["max_tokens"] == DEFAULT_COMPLETION_MAX_TOKENS
    _, ids_batch = render_completion({"prompt": [[1, 2], [3]]}, "x3", 1024)
    assert [r["token_ids"] for r in ids_batch] == [[1, 2], [3]]


def test_render_chat_matches_what_chat_completions_serves():
    _, req = render_chat({"model": "m", "messages": MSGS, "max_completion_tokens": 4}, "c1",
                         1024)
    served = parse_sim_request("chat", {"model": "m", "messages": MSGS})
    assert req["request_id"] == "chatcmpl-c1"
    assert req["token_ids"] == tokenizer.encode(served.prompt_text)
    assert req["sampling_params"]["max_tokens"] == 4
    _, fill = render_chat({"model": "m", "messages": MSGS}, "c2", 1024)
    assert fill["sampling_params"]["max_tokens"] == 1024 - 7   # what the context leaves


@pytest.mark.parametrize("call,body,param", [
    (tokenize, {"model": "m"}, "prompt"),
    (tokenize, {"prompt": "a", "messages": MSGS}, "prompt"),
    (tokenize, {"prompt": 5}, "prompt"),
    (tokenize, {"prompt": "a", "model": 3}, "model"),
    (tokenize, {"messages": MSGS, "continue_final_message": True}, "continue_final_message"),
    (tokenize, {"messages": "hi"}, "messages"),
    (tokenize, {"prompt": "a", "add_special_tokens": "no"}, "add_special_tokens"),
    (detokenize, {"model": "m"}, "tokens"),
    (detokenize, {"tokens": [1, -2]}, "tokens"),
    (detokenize, {"tokens": "1 2"}, "tokens"),
    (render_completion, {"model": "m"}, "prompt"),
    (render_completion, {"prompt": []}, "prompt"),
    (render_completion, {"prompt": ""}, "prompt"),
    (render_completion, {"prompt": "a", "max_tokens": 0}, "max_tokens"),
    (render_completion, {"prompt": "a", "max_tokens": 64}, "max_tokens"),   # past the context
    (render_chat, {"model": "m"}, "messages"),
    (render_chat, {"messages": []}, "messages"),
])
def test_bad_bodies_are_bad_requests_naming_the_field(call, body, param):
    args = (body,) if call is detokenize else (body, "r", 32) if call in (
        render_completion, render_chat) else (body, 32)
    with pytest.raises(BadRequest) as err:
        call(*args)
    assert err.value.param == param


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]"])
def test_non_object_bodies_are_bad_requests(raw):
    for call, args in ((tokenize, (32,)), (detokenize, ()), (render_completion, ("r", 32)),
                       (render_chat, ("r", 32))):
        with pytest.raises(BadRequest):
            call(raw, *args)
