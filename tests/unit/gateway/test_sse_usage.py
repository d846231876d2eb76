"""Usage extraction from relayed responses, fed in arbitrary chunkings."""

from __future__ import annotations

import orjson
import pytest

from inferoute.gateway.proxy import forward_request_headers, forward_response_headers
from inferoute.core.sse import UsageTracker

USAGE = {"prompt_tokens": 812, "completion_tokens": 5, "total_tokens": 817}


def _sse(events: list[object]) -> bytes:
    out = b""
    for e in events:
        out += b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n"
    return out


STREAM = _sse([
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}], "usage": None},
    *({"id": "c1", "choices": [{"index": 0, "delta": {"content": f"t{i} \"usage\""}}]}
      for i in range(5)),
    {"id": "c1", "choices": [], "usage": USAGE},
    b"[DONE]",
])


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_final_chunk_usage_any_chunking(size):
    tracker = UsageTracker(stream=True)
    for i in range(0, len(STREAM), size):
        tracker.feed(STREAM[i:i + size])
    assert tracker.finish() == USAGE
    assert tracker.events == 7


def test_stream_without_usage():
    tracker = UsageTracker(stream=True)
    tracker.feed(_sse([{"choices": [{"delta": {"content": "x"}}]}, b"[DONE]"]))
    assert tracker.finish() is None


def test_last_line_without_newline_and_crlf():
    body = b'data: {"choices":[]}\r\n\r\ndata: {"choices":[],"usage":{"completion_tokens":3}}'
    tracker = UsageTracker(stream=True)
    tracker.feed(body)
    assert tracker.finish() == {"completion_tokens": 3}


def test_responses_api_completed_event():
    body = (b"event: response.completed\n"
            + _sse([{"type": "response.completed",
                     "response": {"id": "r", "usage": {"input_tokens": 9,
                                                       "output_tokens": 4}}}]))
    tracker = UsageTracker(stream=True)
    tracker.feed(body)
    assert tracker.finish() == {"input_tokens": 9, "output_tokens": 4}


def test_non_stream_json_body_in_pieces():
    body = orjson.dumps({"id": "x", "choices": [{"text": "hi"}], "usage": USAGE})
    tracker = UsageTracker(stream=False)
    tracker.feed(body[:10])
    tracker.feed(body[10:])
    assert tracker.finish() == USAGE


def test_non_stream_garbage_is_ignored():
    tracker = UsageTracker(stream=False)
    tracker.feed(b'<html>"usage" 502 Bad Gateway</html>')
    assert tracker.finish() is None


def test_hop_by_hop_and_destination_headers_are_stripped():
    hdrs = {"Host": "gw", "Content-Length": "12", "Connection": "keep-alive, X-Custom",
            "X-Custom": "1", "Keep-Alive": "timeout=5", "Authorization": "Bearer k",
            "x-gateway-destination-endpoint": "1.2.3.4:80", "Content-Type": "application/json",
            "TE": "trailers"}
    assert forward_request_headers(hdrs) == {"Authorization": "Bearer k",
                                             "Content-Type": "application/json"}
    out = forward_response_headers({"Transfer-Encoding": "chunked", "Content-Type": "x",
                                    "Content-Length": "5", "Connection": "close"})
    assert out == [("Content-Type", "x"), ("Content-Length", "5")]


def test_split_events_holds_only_an_incomplete_tail():
    from inferoute.core.sse import split_events as _split_events

    assert _split_events(b"data: a\n\ndata: b\n\n") == (b"data: a\n\ndata: b\n\n", b"")
    assert _split_events(b"data: a\n\ndata: b") == (b"data: a\n\n", b"data: b")
    assert _split_events(b"data: par") == (b"", b"data: par")
    assert _split_events(b"data: a\r\n\r\ndata: b") == (b"data: a\r\n\r\n", b"data: b")
