"""`inferoute epp` as a real process in front of `inferoute sim`, driven over gRPC the way Envoy
drives an ext_proc endpoint picker (see conftest: Envoy is not installable here)."""

from __future__ import annotations

import asyncio
from importlib.resources import files

import aiohttp
import grpc
import orjson
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHAT = "/v1/chat/completions"
DEST = "x-gateway-destination-endpoint"


def chat(content: str, **extra: object) -> bytes:
    return orjson.dumps({"model": "sim-model", "max_tokens": 8,
                         "messages": [{"role": "user", "content": content}], **extra})


@pytest.fixture
async def channel(epp, kit):
    await kit.wait_ready(epp.ports["metrics"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.ports['grpc']}") as ch:
        yield ch


async def test_health_service_answers_serving(epp):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.ports['health']}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "liveness", "readiness",
                        "envoy.service.ext_proc.v3.ExternalProcessor"):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_streamed_request_routes_and_reports_usage(epp, sim, kit, channel):
    before = await kit.scrape(epp.ports["metrics"])
    s = kit.EnvoyStream(channel)
    body = chat("tell me a story", stream=True, stream_options={"include_usage": True})
    ans = await s.request(CHAT, body, chunk=7)
    dest = ans["headers"][DEST]
    assert f"http://{dest}" in sim
    lb = ans["metadata"].fields["envoy.lb"].struct_value.fields
    assert lb[DEST].string_value == dest
    assert ans["body"] == body and ans["headers"]["content-length"] == str(len(body))
    relayed = await s.respond(aiohttp_session := aiohttp.ClientSession(),
                              f"http://{dest}{CHAT}", ans["body"], served=dest)
    await aiohttp_session.close()
    assert b"data: [DONE]" in relayed and b'"usage"' in relayed
    after = await kit.scrape(epp.ports["metrics"])
    d = lambda n, **lab: kit.metric(after, n, **lab) - kit.metric(before, n, **lab)
    assert d("inference_objective_request_total", model_name="sim-model") == 1
    assert d("inference_objective_output_tokens_count") == 1
    assert d("inference_objective_request_duration_seconds_count") == 1
    assert kit.metric(after, "inferoute_endpoint_in_flight_requests") == 0


async def test_large_body_comes_back_in_62000_byte_chunks(epp, kit, channel):
    s = kit.EnvoyStream(channel)
    body = chat("y" * 4_000_000)
    ans = await s.request(CHAT, body, chunk=16384)
    assert ans["body"] == body
    assert max(len(c) for c in ans["chunks"]) == 62_000
    assert len(ans["chunks"]) == -(-len(body) // 62_000)
    await s.call.done_writing()
    s.call.cancel()


async def test_buffered_mode(epp, sim, kit, channel):
    s = kit.EnvoyStream(channel)
    ans = await s.request(CHAT, chat("buffered please"), mode=kit.BUFFERED)
    assert f"http://{ans['headers'][DEST]}" in sim
    async with aiohttp.ClientSession() as session:
        await s.respond(session, f"http://{ans['headers'][DEST]}{CHAT}", ans["body"],
                        served=ans["headers"][DEST], mode=kit.BUFFERED)


async def test_model_rewrite_header(epp, kit, channel):
    s = kit.EnvoyStream(channel)
    body = orjson.dumps({"model": "client-name", "prompt": "hi", "max_tokens": 2})
    ans = await s.request("/v1/completions", body,
                          extra_headers={"x-gateway-model-name-rewrite": "sim-model",
                                         "x-gateway-destination-endpoint-served": "1.2.3.4:5"})
    sent = orjson.loads(ans["body"])
    assert sent["model"] == "sim-model" and sent["prompt"] == "hi"
    assert ans["headers"]["content-length"] == str(len(ans["body"]))
    assert "x-gateway-destination-endpoint-served" in ans["removed"]
    s.call.cancel()


@pytest.mark.parametrize("body,status", [
    (b"{oops", 400),
    (orjson.dumps({"model": "sim-model"}), 400),
    (orjson.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404),
    (b'{"model": "sim-model", "pad": "' + b"z" * 6_100_000 + b'"}', 413),
], ids=["bad-json", "no-messages", "unknown-model", "too-large"])
async def test_errors_are_immediate_json_responses(epp, kit, channel, body, status):
    s = kit.EnvoyStream(channel)
    ans = await s.request(CHAT, body, chunk=65536)
    ir = ans["immediate"]
    assert ir.status.code == status
    assert orjson.loads(ir.body)["error"]["message"]
    assert await s.ended()


async def test_no_ready_endpoint_is_503(kit):
    p = kit.start_epp("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{p.ports['grpc']}") as ch:
            ans = await kit.EnvoyStream(ch).request(CHAT, chat("anyone?"))
            assert ans["immediate"].status.code == 503
    finally:
        assert p.stop() == 0


async def test_aborted_streams_leave_nothing_in_flight(epp, sim, kit, channel):
    async with aiohttp.ClientSession() as session:
        # cut after routing, before any response
        s1 = kit.EnvoyStream(channel)
        await s1.request(CHAT, chat("one"))
        # cut in the middle of a streamed response
        s2 = kit.EnvoyStream(channel)
        a2 = await s2.request(CHAT, chat("two", stream=True, max_tokens=64))
        await s2.respond(session, f"http://{a2['headers'][DEST]}{CHAT}", a2["body"],
                         served=a2["headers"][DEST], stop_after_chunks=2)
        # cut in the middle of the request body
        s3 = kit.EnvoyStream(channel)
        await s3.send(kit.headers_msg({":method": "POST", ":path": CHAT}))
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
        await s3.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"model"')))
        samples = await kit.scrape(epp.ports["metrics"])
        assert kit.metric(samples, "inferoute_endpoint_in_flight_requests") >= 2
        for s in (s1, s2, s3):
            s.call.cancel()
    for _ in range(100):
        samples = await kit.scrape(epp.ports["metrics"])
        if kit.metric(samples, "inferoute_endpoint_in_flight_requests") == 0:
            break
        await asyncio.sleep(0.05)
    assert kit.metric(samples, "inferoute_endpoint_in_flight_requests") == 0
    assert kit.metric(samples, "inference_objective_running_requests") == 0
    assert kit.metric(samples, "inference_objective_request_error_total",
                      error_code="client_disconnect") >= 2


async def test_concurrent_streams(epp, sim, kit, channel):
    async def one(i: int) -> str:
        s = kit.EnvoyStream(channel)
        ans = await s.request(CHAT, chat(f"question number {i} " * 20))
        async with aiohttp.ClientSession() as session:
            await s.respond(session, f"http://{ans['headers'][DEST]}{CHAT}", ans["body"],
                            served=ans["headers"][DEST])
        return ans["headers"][DEST]

    dests = await asyncio.gather(*(one(i) for i in range(40)))
    assert {f"http://{d}" for d in dests} == set(sim)  # load spread over both replicas
    samples = await kit.scrape(epp.ports["metrics"])
    assert kit.metric(samples, "inferoute_endpoint_in_flight_requests") == 0


async def test_shared_prefix_sticks_to_one_endpoint(sim, kit, tmp_path):
    # the llm-d weights, with scrapes up to 10 minutes old counting as fresh: on a starved
    # machine a late scrape would otherwise take the prefix's holder out of the candidates,
    # and this test is about prefix affinity, not staleness
    policy = yaml.safe_load(files("inferoute.configs").joinpath("llm-d.yaml").read_text())
    policy["saturationDetector"] = {"metricsStalenessThreshold": "600s"}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    p = kit.start_epp(*sim, extra=("--scheduler", str(tmp_path / "policy.yaml")))
    system = "You are a meticulous assistant. " * 200
    dests = []
    try:
        await kit.wait_ready(p.ports["metrics"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{p.ports['grpc']}") as channel, \
                aiohttp.ClientSession() as session:
            for i in range(4):
                # the prefix's holder must not look busy from a scrape taken while the last
                # request ran there: the load scorers would then rightly send this one away
                await kit.wait_idle(p.ports["metrics"])
                s = kit.EnvoyStream(channel)
                body = orjson.dumps({"model": "sim-model", "max_tokens": 4, "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {i}"}]})
                ans = await s.request(CHAT, body)
                await s.respond(session, f"http://{ans['headers'][DEST]}{CHAT}", ans["body"],
                                served=ans["headers"][DEST])
                dests.append(ans["headers"][DEST])
    finally:
        assert p.stop(timeout=15) == 0, p.log()
    assert len(set(dests)) == 1, dests


async def test_admission_sheds_and_queues_while_saturated(sim, kit, tmp_path):
    # metrics older than 1 microsecond count as stale, so the pool is always saturated:
    # sheddable requests get 429 at once, others wait in the queue until their TTL
    adm = tmp_path / "admission.yaml"
    adm.write_text("admission:\n"
                   "  saturationDetector: {metricsStalenessThreshold: 1us}\n"
                   "  objectives: [{name: batch, priority: -1}, {name: chat, priority: 10}]\n"
                   "  flowControl: {ttl: 300ms, retryAfter: 2s}\n")
    p = kit.start_epp(*sim, extra=("--admission", str(adm)))
    try:
        await kit.wait_ready(p.ports["metrics"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{p.ports['grpc']}") as ch:
            shed = await kit.EnvoyStream(ch).request(
                CHAT, chat("later"), extra_headers={"x-gateway-inference-objective": "batch"})
            ir = shed["immediate"]
            assert ir.status.code == 429
            assert orjson.loads(ir.body)["error"]["code"] == "overloaded"
            hdrs = {h.header.key: h.header.raw_value for h in ir.headers.set_headers}
            assert hdrs["retry-after"] == b"2"
            queued = await kit.EnvoyStream(ch).request(
                CHAT, chat("now"), extra_headers={"x-gateway-inference-objective": "chat"})
            ir = queued["immediate"]
            assert ir.status.code == 429
            assert orjson.loads(ir.body)["error"]["code"] == "queue_timeout"
        # the flow-control gauges are exported, as by the gateway (the request that waited
        # has timed out: nothing queued now)
        samples = await kit.scrape(p.ports["metrics"])
        for name, labels in (("inference_extension_flow_control_queue_size",
                              (("inference_pool", "sim-model"), ("priority", "all"))),
                             ("inference_extension_flow_control_queue_bytes",
                              (("inference_pool", "sim-model"),)),
                             ("inferoute_flow_control_reserved_slots",
                              (("inference_pool", "sim-model"),))):
            assert samples.get((name, labels)) == 0.0, (name, sorted(samples))
    finally:
        assert p.stop() == 0
