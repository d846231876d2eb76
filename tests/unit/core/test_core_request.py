"""parse_request: the three OpenAI body shapes, the prefix text, and clear errors."""

from __future__ import annotations

import pytest

from inferoute.core.errors import BadRequest
from inferoute.core.request import parse_request


def parse(api, body, headers=None):
    return parse_request(api, body, headers, request_id="r1", arrival_time=5.0)


def test_completions_string_prompt_and_fields() -> None:
    raw = b'{"model": "m", "prompt": "Hello there", "max_tokens": 7, "stream": true}'
    r = parse("completions", raw, {"x-session-token": "s"})
    assert (r.model, r.target_model, r.prefix_text, r.max_tokens, r.stream) == (
        "m", "m", "Hello there", 7, True)
    assert r.body_size == len(raw) and r.arrival_time == 5.0
    assert r.header("x-session-token") == "s"
    assert r.prompt_tokens_estimate == len("Hello there") // 4


def test_completions_list_prompts() -> None:
    assert parse("completions", {"model": "m", "prompt": ["a", "b"]}).prefix_text == "a\nb"
    assert parse("completions", {"model": "m", "prompt": [1, 2, 3]}).prefix_text == "1 2 3"


def test_chat_rendering_is_deterministic_and_grows_by_appending() -> None:
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    a = parse("chat", {"model": "m", "messages": msgs, "max_completion_tokens": 3})
    b = parse("chat", {"model": "m", "messages": msgs + [
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]})
    assert a.max_tokens == 3
    assert "You are terse." in a.prefix_text and "Hi" in a.prefix_text
    assert b.prefix_text.startswith(a.prefix_text) and len(b.prefix_text) > len(a.prefix_text)
    assert parse("chat", {"model": "m", "messages": msgs}).prefix_text == a.prefix_text


def test_responses_input_and_instructions() -> None:
    r = parse("responses", {"model": "m", "input": "Why?", "instructions": "Be brief",
                            "max_output_tokens": 9})
    assert r.prefix_text.startswith("<|system|>\nBe brief") and r.prefix_text.endswith("Why?")
    assert r.max_tokens == 9
    r2 = parse("responses", {"model": "m", "input": [{"content": "x"}]})
    assert "<|user|>" in r2.prefix_text


@pytest.mark.parametrize("api, body, fragment", [
    ("completions", b"{not json", "not valid JSON"),
    ("completions", b"[1, 2]", "must be a JSON object"),
    ("completions", {"prompt": "x"}, "'model' is required"),
    ("completions", {"model": "", "prompt": "x"}, "'model' is required"),
    ("completions", {"model": "m"}, "'prompt' is required"),
    ("completions", {"model": "m", "prompt": {"a": 1}}, "'prompt' must be"),
    ("completions", {"model": "m", "prompt": "x", "max_tokens": 0}, "'max_tokens'"),
    ("completions", {"model": "m", "prompt": "x", "max_tokens": True}, "'max_tokens'"),
    ("completions", {"model": "m", "prompt": "x", "stream": "yes"}, "'stream'"),
    ("chat", {"model": "m"}, "'messages' is required"),
    ("chat", {"model": "m", "messages": []}, "non-empty list"),
    ("chat", {"model": "m", "messages": ["hi"]}, "messages[0] must be an object"),
    ("chat", {"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
    ("responses", {"model": "m"}, "'input' is required"),
])
def test_bad_bodies_name_the_problem(api, body, fragment) -> None:
    with pytest.raises(BadRequest) as exc:
        parse(api, body)
    assert fragment in exc.value.message
    assert exc.value.status == 400
    assert exc.value.to_dict()["error"]["type"] == "invalid_request_error"
