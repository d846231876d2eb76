"""The endpoint-picker protocol state machine, driven with fake ProcessingRequest messages."""

from __future__ import annotations

import orjson
import pytest

from inferoute.core.admission.flowcontrol import Ticket
from inferoute.core.errors import TooManyRequests
from inferoute.extproc.protocol import EndpointPicker, PickerSettings

CHAT = "/v1/chat/completions"


def chat_body(content: str = "hello", model: str = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                         **extra})


def req_headers(path: str = CHAT, **extra: str) -> dict[str, str]:
    return {":method": "POST", ":path": path, "content-type": "application/json", **extra}


def test_full_duplex_holds_headers_then_answers_with_destination(router, msgs):
    s = EndpointPicker(router).stream()
    assert s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0) == []
    body = chat_body()
    assert s.handle(msgs.body_msg(body[:10], eos=False), 0.1) == []
    out = s.handle(msgs.body_msg(body[10:], eos=True), 0.2)
    assert [r.WhichOneof("response") for r in out] == ["request_headers", "request_body"]
    hdr = out[0]
    assert hdr.request_headers.response.clear_route_cache
    assert msgs.set_headers(hdr) == {"x-gateway-destination-endpoint": "10.0.0.1:8000",
                                     "content-length": str(len(body))}
    opt = hdr.request_headers.response.header_mutation.set_headers[0]
    assert opt.append_action == opt.OVERWRITE_IF_EXISTS_OR_ADD
    lb = hdr.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000"
    (chunk,) = msgs.streamed(out[1:])
    assert chunk.body == body and chunk.end_of_stream
    assert router.pools["m"].pool.get("10.0.0.1:8000").in_flight_requests == 1


def test_no_protocol_config_assumes_full_duplex(router, msgs):
    s = EndpointPicker(router).stream()
    assert s.handle(msgs.headers_msg(req_headers()), 0.0) == []
    out = s.handle(msgs.body_msg(chat_body()), 0.0)
    assert out[0].WhichOneof("response") == "request_headers"


def test_large_body_goes_back_in_62000_byte_chunks(router, msgs):
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    body = chat_body("x" * 3_000_000)
    out = []
    for i in range(0, len(body), 16384):
        out += s.handle(msgs.body_msg(body[i:i + 16384], eos=i + 16384 >= len(body)), 0.0)
    pieces = msgs.streamed(out[1:])
    assert all(len(p.body) <= 62_000 for p in pieces)
    assert len(pieces) == -(-len(body) // 62_000)
    assert b"".join(p.body for p in pieces) == body
    assert [p.end_of_stream for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert msgs.set_headers(out[0])["content-length"] == str(len(body))


def test_body_over_the_bound_is_413(router, msgs):
    s = EndpointPicker(router, PickerSettings(max_body_bytes=1000)).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    assert s.handle(msgs.body_msg(b"x" * 600, eos=False), 0.0) == []
    (out,) = s.handle(msgs.body_msg(b"x" * 600, eos=False), 0.0)
    assert out.immediate_response.status.code == 413
    assert s.done
    assert s.handle(msgs.body_msg(b"x", eos=True), 0.0) == []


def test_model_rewrite_header_rewrites_body_and_length(msgs):
    router = msgs.make_router(model="base")
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(**{"x-gateway-model-name-rewrite": "base"}),
                              mode=msgs.FULL_DUPLEX), 0.0)
    body = chat_body(model="alias-from-client", temperature=0.5)
    out = s.handle(msgs.body_msg(body), 0.0)
    sent = b"".join(c.body for c in msgs.streamed(out[1:]))
    assert orjson.loads(sent) == {**orjson.loads(body), "model": "base"}
    assert msgs.set_headers(out[0])["content-length"] == str(len(sent))
    removed = list(out[0].request_headers.response.header_mutation.remove_headers)
    assert "x-gateway-model-name-rewrite" in removed


def test_alias_is_rewritten_to_the_pool_model(msgs):
    router = msgs.make_router(model="base", aliases=("nick",))
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    out = s.handle(msgs.body_msg(chat_body(model="nick")), 0.0)
    assert orjson.loads(msgs.streamed(out[1:])[0].body)["model"] == "base"


def test_client_destination_headers_are_stripped(router, msgs):
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(**{
        "x-gateway-destination-endpoint": "6.6.6.6:1",
        "x-gateway-destination-endpoint-served": "6.6.6.6:1",
        "x-gateway-destination-endpoint-subset": "6.6.6.6:1"}), mode=msgs.FULL_DUPLEX), 0.0)
    out = s.handle(msgs.body_msg(chat_body()), 0.0)
    mutation = out[0].request_headers.response.header_mutation
    assert set(mutation.remove_headers) == {"x-gateway-destination-endpoint-served",
                                            "x-gateway-destination-endpoint-subset"}
    # the exact destination header is overwritten rather than removed
    assert msgs.set_headers(out[0])["x-gateway-destination-endpoint"] == "10.0.0.1:8000"


def test_fallbacks_are_comma_separated(router, msgs):
    s = EndpointPicker(router, PickerSettings(fallbacks=3)).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    out = s.handle(msgs.body_msg(chat_body()), 0.0)
    assert msgs.set_headers(out[0])["x-gateway-destination-endpoint"] == \
        "10.0.0.1:8000,10.0.0.2:8000"


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), 400),
    (chat_body(model="nope"), 404),
    # nesting orjson cannot write back (it was a TypeError ending the gRPC stream)
    (chat_body(metadata="NEST").replace(b'"NEST"', b"[" * 300 + b"]" * 300), 400),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": '
     + b"[" * 600 + b"]" * 600 + b"}]}", 400),
    (chat_body(temperature="x"), 400),
    (chat_body(n=0), 400),
])
def test_bad_requests_get_json_immediate_responses(router, msgs, body, status):
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    (out,) = s.handle(msgs.body_msg(body), 0.0)
    ir = out.immediate_response
    assert ir.status.code == status
    err = orjson.loads(ir.body)["error"]
    assert err["message"] and err["type"]
    hdrs = {h.header.key: h.header.raw_value for h in ir.headers.set_headers}
    assert hdrs["content-type"] == b"application/json"


def test_no_ready_endpoint_is_503(router, msgs):
    for ep in router.pools["m"].pool:
        ep.healthy = False
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    (out,) = s.handle(msgs.body_msg(chat_body()), 0.0)
    assert out.immediate_response.status.code == 503


class FakeAdmission:
    """Admission control that sheds everything, or queues everything."""

    def __init__(self, shed: bool) -> None:
        self.shed = shed

    def classify(self, request, **kw) -> None:
        pass

    def admit(self, request, pool, now):
        if self.shed:
            raise TooManyRequests("saturated", retry_after=2)
        return Ticket(request=request, pool=pool.model, priority=0, flow="default", size=1,
                      enqueued_at=now, deadline=now + 10)

    def cancel(self, ticket) -> bool:
        return True


def test_shed_is_429_with_retry_after(router, msgs):
    s = EndpointPicker(router, admission=FakeAdmission(shed=True)).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    (out,) = s.handle(msgs.body_msg(chat_body()), 0.0)
    assert out.immediate_response.status.code == 429
    hdrs = {h.header.key: h.header.raw_value for h in out.immediate_response.headers.set_headers}
    assert hdrs["retry-after"] == b"2"
    assert all(ep.in_flight_requests == 0 for ep in router.pools["m"].pool)


def test_admission_ticket_waits_then_resumes(router, msgs):
    s = EndpointPicker(router, admission=FakeAdmission(shed=False)).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    assert s.handle(msgs.body_msg(chat_body()), 0.0) == []
    assert s.waiting is not None
    out = s.resume(1.0)
    assert msgs.set_headers(out[0])["x-gateway-destination-endpoint"] == "10.0.0.1:8000"


def test_buffered_mode_answers_headers_at_once_and_routes_on_the_body(router, msgs):
    s = EndpointPicker(router).stream()
    (first,) = s.handle(msgs.headers_msg(req_headers(), mode=msgs.BUFFERED), 0.0)
    assert first.WhichOneof("response") == "request_headers"
    assert not first.request_headers.response.header_mutation.set_headers
    (out,) = s.handle(msgs.body_msg(chat_body()), 0.0)
    common = out.request_body.response
    assert common.clear_route_cache
    assert msgs.set_headers(out) == {"x-gateway-destination-endpoint": "10.0.0.1:8000"}
    assert not common.HasField("body_mutation")  # unchanged body passes as it is
    assert out.dynamic_metadata.fields["envoy.lb"].struct_value.fields[
        "x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000"


def test_streamed_mode_is_refused_with_a_clear_error(router, msgs):
    s = EndpointPicker(router).stream()
    (out,) = s.handle(msgs.headers_msg(req_headers(), mode=msgs.STREAMED), 0.0)
    assert out.immediate_response.status.code == 500
    assert b"FULL_DUPLEX_STREAMED" in out.immediate_response.body


def test_bodyless_request_goes_to_the_least_loaded_endpoint(router, msgs):
    router.pools["m"].pool.get("10.0.0.1:8000").in_flight_requests = 3
    s = EndpointPicker(router).stream()
    (out,) = s.handle(msgs.headers_msg({":method": "GET", ":path": "/v1/models"}, eos=True,
                                       mode=msgs.FULL_DUPLEX), 0.0)
    assert msgs.set_headers(out)["x-gateway-destination-endpoint"] == "10.0.0.2:8000"


def test_subset_hint_restricts_candidates(router, msgs):
    s = EndpointPicker(router).stream()
    req = msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX)
    s.handle(req, 0.0)
    body = msgs.body_msg(chat_body())
    hint = body.metadata_context.filter_metadata["envoy.lb.subset_hint"]
    hint.fields["x-gateway-destination-endpoint-subset"].list_value.values.add(
        ).string_value = "10.0.0.2:8000"
    out = s.handle(body, 0.0)
    assert msgs.set_headers(out[0])["x-gateway-destination-endpoint"] == "10.0.0.2:8000"


def test_response_phase_reads_usage_and_finishes_once(router, msgs):
    finished = []

    class Obs:
        def routed(self, stream, now): pass
        def rejected(self, stream, err, now): pass
        def finished(self, stream, now): finished.append((stream.usage, stream.completed))

    s = EndpointPicker(router, observer=Obs()).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    s.handle(msgs.body_msg(chat_body(stream=True)), 0.0)
    ep = router.pools["m"].pool.get("10.0.0.1:8000")
    assert ep.in_flight_requests == 1
    (h,) = s.handle(msgs.resp_headers_msg({":status": "200",
                                           "content-type": "text/event-stream"},
                                          served="10.0.0.1:8000"), 0.5)
    assert h.WhichOneof("response") == "response_headers"
    sse = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,'
           b'"total_tokens":9}}\n\ndata: [DONE]\n\n')
    out = []
    assert s.decision is not None and not s.decision.first_token
    for i in range(0, len(sse), 20):  # split mid-line on purpose
        out += s.handle(msgs.resp_body_msg(sse[i:i + 20]), 0.6)
        assert s.decision.first_token  # reported to the scheduler with the first bytes
    out += s.handle(msgs.resp_body_msg(b"", eos=True), 0.7)
    echoed = msgs.streamed(out, "response_body")
    assert b"".join(c.body for c in echoed) == sse and echoed[-1].end_of_stream
    assert finished == [({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}, True)]
    assert ep.in_flight_requests == 0
    s.close(1.0)
    assert len(finished) == 1 and ep.in_flight_requests == 0


def test_served_fallback_moves_bookkeeping(router, msgs):
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    s.handle(msgs.body_msg(chat_body()), 0.0)
    a, b = router.pools["m"].pool.endpoints()
    assert (a.in_flight_requests, b.in_flight_requests) == (1, 0)
    s.handle(msgs.resp_headers_msg({":status": "200"}, served=b.name), 0.1)
    assert (a.in_flight_requests, b.in_flight_requests) == (0, 1)
    s.close(0.2)
    assert (a.in_flight_requests, b.in_flight_requests) == (0, 0)


def test_json_response_usage_in_buffered_response_mode(router, msgs):
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.BUFFERED), 0.0)
    s.handle(msgs.body_msg(chat_body()), 0.0)
    s.handle(msgs.resp_headers_msg({":status": "200", "content-type": "application/json"}), 0.1)
    (out,) = s.handle(msgs.resp_body_msg(
        b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}', eos=True), 0.2)
    assert out.WhichOneof("response") == "response_body"
    assert not out.response_body.response.HasField("body_mutation")
    assert s.usage == {"prompt_tokens": 3, "completion_tokens": 4} and s.completed


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3])
def test_stream_closed_at_any_phase_leaves_nothing_in_flight(router, msgs, stop_after):
    steps = [msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX),
             msgs.body_msg(chat_body()),
             msgs.resp_headers_msg({":status": "200", "content-type": "text/event-stream"}),
             msgs.resp_body_msg(b'data: {"x": 1}\n\n')]
    s = EndpointPicker(router).stream()
    for msg in steps[: stop_after + 1]:
        s.handle(msg, 0.0)
    s.close(1.0)
    assert all(ep.in_flight_requests == 0 and ep.in_flight_tokens == 0
               for ep in router.pools["m"].pool)
    assert not s.completed


def test_concurrent_streams_spread_then_release(router, msgs):
    picker = EndpointPicker(router)
    streams = [picker.stream() for _ in range(6)]
    dests = []
    for s in streams:
        s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
        dests.append(msgs.set_headers(s.handle(msgs.body_msg(chat_body()), 0.0)[0])[
            "x-gateway-destination-endpoint"])
    assert sorted(dests) == ["10.0.0.1:8000"] * 3 + ["10.0.0.2:8000"] * 3
    for s in streams:
        s.close(1.0)
    assert all(ep.in_flight_requests == 0 for ep in router.pools["m"].pool)


def test_request_trailers_end_the_body(router, msgs):
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    s = EndpointPicker(router).stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    s.handle(msgs.body_msg(chat_body(), eos=False), 0.0)
    out = s.handle(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()), 0.0)
    kinds = [r.WhichOneof("response") for r in out]
    assert kinds == ["request_headers", "request_body", "request_trailers"]
    assert not msgs.streamed(out[1:2])[0].end_of_stream


def test_default_pool_takes_unclaimed_model_names_unchanged(router, msgs):
    s = EndpointPicker(router, default_model="m").stream()
    s.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    body = chat_body(model="whatever-the-client-says")
    out = s.handle(msgs.body_msg(body), 0.0)
    assert msgs.set_headers(out[0])["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert msgs.streamed(out[1:])[0].body == body  # passed through, not rewritten
    s2 = EndpointPicker(router).stream()  # without a default pool: 404
    s2.handle(msgs.headers_msg(req_headers(), mode=msgs.FULL_DUPLEX), 0.0)
    (err,) = s2.handle(msgs.body_msg(body), 0.0)
    assert err.immediate_response.status.code == 404


def test_same_decisions_as_the_gateway_path(msgs):
    """The picker feeds the core exactly what the HTTP gateway does: on identically seeded
    routers, a mixed sequence (shared prefixes, distinct ones, overlapping requests) gets the
    same endpoint through the ext_proc protocol as through parse_request + Router, the
    gateway's decision path (gateway/proxy.py)."""
    from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
    from inferoute.core.request import parse_request
    from inferoute.core.router import ModelPool, Router
    from inferoute.core.scheduling.config import default_config
    from inferoute.core.scheduling.scheduler import Scheduler

    def build() -> Router:
        eps = [Endpoint(host=f"10.0.0.{i}", port=8000,
                        metrics=EndpointMetrics(waiting=i % 2, kv_usage=0.1 * i, scraped_at=0.0))
               for i in range(1, 5)]
        return Router([ModelPool("m", Pool("m", eps), Scheduler(default_config(), seed=7))])

    bodies = []
    for i in range(24):
        system = f"system prompt of tenant {i % 3} " * 150
        bodies.append(orjson.dumps({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}]}))
    gw, epp = build(), build()
    picker = EndpointPicker(epp)
    via_gateway, via_picker, open_gw, open_epp = [], [], [], []
    for i, body in enumerate(bodies):
        now = i * 0.01
        for router in (gw, epp):  # the same fresh scrape reaches both
            for k, ep in enumerate(router.pools["m"].pool):
                ep.metrics = EndpointMetrics(waiting=(i + 3 * k) % 7, kv_usage=0.1 * k,
                                             scraped_at=now)
        req = parse_request("chat", body, {"content-type": "application/json"},
                            request_id=str(i), arrival_time=now)
        d = gw.schedule(req, now)
        gw.dispatch(d, d.result.targets[0], now)
        via_gateway.append(d.endpoint.name)
        open_gw.append(d)
        s = picker.stream()
        s.handle(msgs.headers_msg(req_headers(**{"x-request-id": str(i)}),
                                  mode=msgs.FULL_DUPLEX), now)
        out = s.handle(msgs.body_msg(body), now)
        via_picker.append(msgs.set_headers(out[0])["x-gateway-destination-endpoint"])
        open_epp.append(s)
        if i % 4 == 3:  # some requests finish, others overlap
            gw.finish(open_gw.pop(0), now)
            open_epp.pop(0).close(now)
    assert via_picker == via_gateway
    assert len(set(via_gateway)) >= 2, via_gateway  # more than one endpoint is exercised
