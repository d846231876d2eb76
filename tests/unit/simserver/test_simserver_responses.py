"""The simulator's Responses API shapes: checked against the `openai` SDK's own types."""

from __future__ import annotations

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from inferoute.core.errors import BadRequest
from inferoute.sim.openai_api import parse_sim_request, usage_dict
from inferoute.sim.responses_api import (ResponseEventWriter, ResponseShape, full_response_body,
                                         response_usage)

EVENTS = TypeAdapter(ResponseStreamEvent)


def _events(raw: bytes) -> list[tuple[str, dict]]:
    """(event line, data) of every SSE event in `raw`; each must be `event:` then `data:`."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        out.append((event[7:], orjson.loads(data[6:])))
    return out


def test_request_renders_like_chat_and_always_reports_usage():
    r = parse_sim_request("responses", {"model": "m", "input": "hi there",
                                        "max_output_tokens": 5, "stream": True})
    assert r.prompt_text == "hi there\n<|assistant|>"   # the generation prompt is its own word
    assert (r.max_tokens, r.stream, r.include_usage) == (5, True, True)
    msgs = parse_sim_request("responses", {"model": "m", "instructions": "be brief",
                                           "input": [{"role": "user", "content": "hi"}]})
    assert msgs.prompt_text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>"
    assert msgs.max_tokens is None   # the server fills in max_model_len - prompt


@pytest.mark.parametrize("body,param", [
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "input": "x", "ignore_eos": 1}, "ignore_eos"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(BadRequest) as err:
        parse_sim_request("responses", body)
    assert err.value.param == param


def test_usage_carries_cached_tokens():
    u = response_usage(usage_dict(10, 4, 6))
    assert (u["input_tokens"], u["output_tokens"], u["total_tokens"]) == (10, 4, 14)
    assert u["input_tokens_details"]["cached_tokens"] == 6


def test_full_response_is_an_sdk_response():
    shape = ResponseShape({"model": "m", "input": "x", "instructions": "hi"}, "resp_1", "m", 3,
                          created=7)
    obj = orjson.loads(full_response_body(shape, "a b c", "length", usage_dict(5, 3, 0)))
    r = Response.model_validate(obj)
    assert (r.id, r.object, r.created_at, r.model, r.instructions) == ("resp_1", "response",
                                                                       7, "m", "hi")
    assert r.output_text == "a b c" and r.output[0].type == "message"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.input_tokens == 5 and r.usage.output_tokens == 3
    done = orjson.loads(full_response_body(shape, "a", "stop", usage_dict(5, 1, 0)))
    assert done["status"] == "completed" and done["incomplete_details"] is None


def test_stream_events_come_in_vllms_order_and_parse_as_sdk_events():
    w = ResponseEventWriter(ResponseShape({}, "resp_9", "m", 16, created=1))
    raw = (w.open() + w.token("one") + w.token(" two") + w.final(" three", "stop")
           + w.close(usage_dict(4, 3, 2)))
    events = _events(raw)
    assert [e for e, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert all(d["type"] == e for e, d in events)
    parsed = [EVENTS.validate_python(d) for _, d in events]
    assert "".join(p.delta for p in parsed if p.type == "response.output_text.delta") \
        == "one two three" == parsed[7].text
    final = parsed[-1].response
    assert final.status == "completed" and final.output_text == "one two three"
    assert final.usage.input_tokens_details.cached_tokens == 2
    assert parsed[0].response.status == "in_progress" and parsed[0].response.usage is None


def test_a_last_output_without_text_still_closes_the_item():
    w = ResponseEventWriter(ResponseShape({}, "resp_2", "m", 1))
    raw = w.open() + w.token("only") + w.final("", "length") + w.close(usage_dict(1, 1, 0))
    events = _events(raw)
    assert [e for e, _ in events].count("response.output_text.delta") == 1
    assert events[-1][1]["response"]["status"] == "incomplete"
    assert events[-2][0] == "response.output_item.done"
