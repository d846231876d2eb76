"""include_usage injection and the SSE filter: usage chunk stripped across chunk boundaries,
usage recorded, model name written back."""

from __future__ import annotations

import orjson
import pytest

from inferoute.core.admission import ResponseRewriter, prepare_upstream_body, total_tokens
from inferoute.core.admission.usage import rewrite_response_model
from inferoute.core.sse import usage_of


def _chunk(content: str | None, model: str = "tgt", usage: dict | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    obj = {"id": "c1", "object": "chat.completion.chunk", "model": model, "choices": choices,
           "usage": usage}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
STREAM = (_chunk("Hel") + _chunk("lo") + _chunk("!") + _chunk(None, usage=USAGE)
          + b"data: [DONE]\n\n")


def test_inject_when_client_did_not_ask() -> None:
    up = prepare_upstream_body({"model": "chat", "stream": True, "messages": []}, api="chat",
                               target_model="tgt")
    body = orjson.loads(up.body)
    assert body["stream_options"] == {"include_usage": True} and body["model"] == "tgt"
    assert up.injected and not up.client_wants_usage


def test_no_injection_when_asked_not_streaming_or_responses_api() -> None:
    asked = prepare_upstream_body({"model": "m", "stream": True,
                                   "stream_options": {"include_usage": True,
                                                      "continuous_usage_stats": False}},
                                  api="completions")
    assert asked.client_wants_usage and not asked.injected
    assert orjson.loads(asked.body)["stream_options"]["continuous_usage_stats"] is False
    assert not prepare_upstream_body({"model": "m"}, api="chat").injected
    assert not prepare_upstream_body({"model": "m", "stream": True}, api="responses").injected
    # other stream_options are kept
    up = prepare_upstream_body({"model": "m", "stream": True,
                                "stream_options": {"include_usage": False}}, api="chat")
    assert orjson.loads(up.body)["stream_options"] == {"include_usage": True}


def _run(rw: ResponseRewriter, data: bytes, sizes: list[int]) -> bytes:
    out, i, k = bytearray(), 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out += rw.feed(data[i:i + n])
        i += n
        k += 1
    return bytes(out + rw.finish())


@pytest.mark.parametrize("sizes", [[len(STREAM)], [1], [7, 3, 50], [64], [13, 200]])
def test_strip_usage_chunk_across_boundaries(sizes: list[int]) -> None:
    rw = ResponseRewriter(strip_usage=True)
    out = _run(rw, STREAM, sizes)
    assert out == _chunk("Hel") + _chunk("lo") + _chunk("!") + b"data: [DONE]\n\n"
    assert rw.usage == USAGE and total_tokens(rw.usage) == 15


@pytest.mark.parametrize("sizes", [[len(STREAM)], [5]])
def test_pass_usage_through_when_client_asked(sizes: list[int]) -> None:
    rw = ResponseRewriter(strip_usage=False)
    assert _run(rw, STREAM, sizes) == STREAM
    assert rw.usage == USAGE


@pytest.mark.parametrize("sizes", [[len(STREAM)], [3, 11]])
def test_model_written_back(sizes: list[int]) -> None:
    rw = ResponseRewriter(strip_usage=True, target_model="tgt", client_model="chat")
    out = _run(rw, STREAM, sizes)
    events = [e for e in out.split(b"\n\n") if e]
    assert len(events) == 4 and events[-1] == b"data: [DONE]"
    for e in events[:-1]:
        assert orjson.loads(e[len(b"data: "):])["model"] == "chat"


def test_crlf_events_and_finish_flushes_tail() -> None:
    data = _chunk("a").replace(b"\n\n", b"\r\n\r\n") + _chunk(None, usage=USAGE)[:-2]
    rw = ResponseRewriter(strip_usage=True)
    out = rw.feed(data)
    assert out == _chunk("a").replace(b"\n\n", b"\r\n\r\n")
    assert rw.finish() == b""  # the unterminated last event was the usage chunk
    assert rw.usage == USAGE


def test_non_sse_bytes_are_not_held_forever() -> None:
    rw = ResponseRewriter(strip_usage=True)
    rw.MAX_EVENT = 100
    blob = b'x' * 150 + b'"usage"'
    assert rw.feed(blob) == blob


def test_json_body_helpers() -> None:
    body = orjson.dumps({"model": "tgt", "usage": USAGE, "choices": []})
    assert orjson.loads(rewrite_response_model(body, "tgt", "chat"))["model"] == "chat"
    spaced = b'{"model" : "tgt", "x": 1}'
    assert orjson.loads(rewrite_response_model(spaced, "tgt", "chat"))["model"] == "chat"
    assert usage_of(body) == USAGE
    resp = orjson.dumps({"type": "response.completed",
                         "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}})
    assert total_tokens(usage_of(resp)) == 10
    assert usage_of(b'{"usage": null}') is None and total_tokens(None) is None
