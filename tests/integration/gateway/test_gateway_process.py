"""`inferoute serve` as a real process in front of `inferoute sim` and stand-in servers."""

from __future__ import annotations

import collections
import time

import openai
import pytest

SERVED = "x-gateway-destination-endpoint-served"


def _client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=30)


NO_EOS = {"ignore_eos": True}  # the simulator may otherwise stop early, like vLLM


@pytest.fixture
def sim_gateway(harness, web):
    """Four tiny simulated replicas behind a gateway with the default (llm-d) scheduler."""
    urls = harness.sim(4)
    gw = harness.gateway({"maxBodyBytes": 65536, "pools": [
        {"model": "sim-model", "aliases": ["alias-model"], "endpoints": urls}]})
    # every replica scraped at least once, so all four are candidates from the first request
    deadline = time.monotonic() + 20
    while web.get(gw.url + "/ready").json().get("ready_endpoints", {}).get("sim-model") != 4:
        assert time.monotonic() < deadline, "replicas never all ready"
        time.sleep(0.05)
    return gw, urls


def test_openai_sdk_through_the_gateway(sim_gateway, web):
    gw, urls = sim_gateway
    names = {u.removeprefix("http://") for u in urls}
    client = _client(gw)

    raw = client.completions.with_raw_response.create(model="sim-model", prompt="Hello there",
                                                      max_tokens=5, extra_body=NO_EOS)
    assert raw.headers[SERVED] in names
    comp = raw.parse()
    assert comp.choices[0].text and comp.usage.completion_tokens == 5

    chat = client.chat.completions.create(
        model="alias-model", max_tokens=4, extra_body=NO_EOS,
        messages=[{"role": "user", "content": "What is a KV cache?"}])
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 4

    chunks = list(client.chat.completions.create(
        model="sim-model", max_tokens=6, stream=True, stream_options={"include_usage": True},
        extra_body=NO_EOS,
        messages=[{"role": "user", "content": "Stream please"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6

    pieces = list(client.completions.create(model="sim-model", prompt="Count:", max_tokens=5,
                                            stream=True, extra_body=NO_EOS))
    assert len(pieces) >= 2 and "".join(p.choices[0].text for p in pieces)

    models = client.models.list()
    assert {m.id for m in models.data} == {"sim-model", "alias-model"}

    page = web.get(gw.url + "/metrics").text
    assert 'inference_objective_request_total{model_name="sim-model",target_model_name=' \
           '"sim-model"} 3.0' in page
    assert "inference_extension_scheduler_e2e_duration_seconds_count 4.0" in page
    assert 'inference_pool_ready_pods{name="sim-model"} 4.0' in page
    # usage from the final stream chunk reached the token histograms
    assert "inference_objective_output_tokens_sum" in page


def test_responses_api_through_the_gateway_to_the_simulator(sim_gateway, web):
    gw, urls = sim_gateway
    client = _client(gw)
    whole = client.responses.create(model="alias-model", input="What is a KV cache?",
                                    max_output_tokens=5, extra_body=NO_EOS)
    assert whole.model == "alias-model" and len(whole.output_text.split()) == 5
    assert whole.usage.input_tokens == 6 and whole.usage.output_tokens == 5
    events = list(client.responses.create(model="sim-model", input="Stream please",
                                          max_output_tokens=7, stream=True, extra_body=NO_EOS))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text.split()) == 7 == events[-1].response.usage.output_tokens
    page = web.get(gw.url + "/metrics").text
    # the gateway read the usage of both: the JSON body's and the response.completed event's
    assert web.metric(page, "inference_objective_input_tokens_sum", model_name="alias-model",
                      target_model_name="sim-model") == 6.0
    assert 'inference_objective_output_tokens_sum{model_name="sim-model",' \
           'target_model_name="sim-model"} 7.0' in page
    assert web.metric(page, "inference_objective_output_tokens_sum", model_name="alias-model",
                      target_model_name="sim-model") == 5.0


def test_shared_prefixes_stick_and_distinct_prefixes_spread(sim_gateway):
    gw, _ = sim_gateway
    client = _client(gw)
    system = " ".join(f"rule{i}: answer briefly and cite sources." for i in range(120))

    def served(prompt: str) -> str:
        raw = client.completions.with_raw_response.create(model="sim-model", prompt=prompt,
                                                          max_tokens=2)
        return raw.headers[SERVED]

    same = {served(f"{system}\nQuestion {i}: why?") for i in range(8)}
    assert len(same) == 1, f"one shared prefix landed on {same}"

    spread = collections.Counter(
        served(f"Topic {i} " + " ".join(f"{i}-{j}" for j in range(400))) for i in range(16))
    assert len(spread) >= 3, f"16 distinct prefixes used only {dict(spread)}"


def test_error_responses_are_openai_json(sim_gateway, web):
    gw, _ = sim_gateway

    def post(path: str, **kw):
        return web.post(gw.url + path, timeout=10, **kw)

    cases = [
        (post("/v1/completions", content=b"{not json"), 400, None),
        (post("/v1/completions", json={"model": "sim-model"}), 400, "prompt"),
        (post("/v1/chat/completions", json={"model": "sim-model", "messages": "hi"}), 400,
         "messages"),
        (post("/v1/completions", json={"prompt": "x"}), 400, "model"),
        (post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model"),
        (post("/v1/completions", json={"model": "sim-model", "prompt": "x" * 70000}), 413,
         None),
        (web.get(gw.url + "/v1/completions"), 405, None),
        (web.get(gw.url + "/v2/unknown"), 404, None),
    ]
    for resp, status, param in cases:
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert err["message"] and err["type"]
        if param:
            assert err["param"] == param, err
    with pytest.raises(openai.NotFoundError):
        _client(gw).completions.create(model="nope", prompt="x", max_tokens=1)


def test_no_ready_endpoint_is_503(harness, web):
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [harness.dead_url()]}]},
                         wait_ready=False)
    ready = web.get(gw.url + "/ready")
    assert ready.status_code == 503 and ready.json()["ready_endpoints"] == {"m": 0}
    r = web.post(gw.url + "/v1/chat/completions", timeout=10,
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_endpoint_available"
    assert web.get(gw.url + "/health").status_code == 200


def test_body_model_picks_the_pool(harness, web):
    a = harness.standin("--name", "a")
    b = harness.standin("--name", "b")
    gw = harness.gateway({"pools": [
        {"model": "model-a", "endpoints": [a.url]},
        {"model": "model-b", "loraAdapters": ["b-lora"], "endpoints": [b.url]}]})
    wait = time.monotonic() + 20
    while web.get(gw.url + "/ready").json()["ready_endpoints"] != {"model-a": 1, "model-b": 1}:
        assert time.monotonic() < wait
        time.sleep(0.05)
    client = _client(gw)
    for model, fingerprint in (("model-a", "a"), ("model-b", "b"), ("b-lora", "b")):
        out = client.completions.create(model=model, prompt="x", max_tokens=1)
        assert out.system_fingerprint == fingerprint and out.model == model


def test_retry_on_failing_and_dead_endpoints(harness, web):
    good = harness.standin("--name", "good")
    bad = harness.standin("--fail-status", "500")
    doomed = harness.standin()
    # mdead's metrics count as fresh for 60 s too (else the gateway would stop sending new
    # requests to the dead endpoint as soon as its /metrics is stale, before any retry)
    slow_staleness = {"plugins": [{"type": "round-robin-picker"}],
                      "schedulingProfiles": [{"name": "default", "plugins": [
                          {"pluginRef": "round-robin-picker"}]}],
                      "saturationDetector": {"metricsStalenessThreshold": "60s"}}
    gw = harness.gateway({"readyWindow": "60s", "pools": [
        {"model": "m500", "scheduler": "round-robin", "endpoints": [good.url, bad.url]},
        {"model": "mdead", "scheduler": slow_staleness, "endpoints": [good.url, doomed.url]}]})
    deadline = time.monotonic() + 20
    while web.get(gw.url + "/ready").json()["ready_endpoints"] != {"m500": 2, "mdead": 2}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    doomed.stop()  # still "ready" and fresh for 60 s: the gateway learns only by connecting
    good_name = good.url.removeprefix("http://")
    for model in ("m500", "mdead"):
        for i in range(6):
            r = web.post(gw.url + "/v1/completions", timeout=10,
                         json={"model": model, "prompt": f"p{i}", "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.headers[SERVED] == good_name
    page = web.get(gw.url + "/metrics").text
    for model in ("m500", "mdead"):
        # round robin: every other request is first sent to the failing endpoint
        assert web.metric(page, "inferoute_upstream_retries_total", pool=model) == 3.0
    assert web.metric(page, "inferoute_endpoint_in_flight_requests",
                      endpoint=bad.url.removeprefix("http://")) == 0.0
    assert web.metric(page, "inference_objective_request_error_total") is None


def test_client_disconnect_cancels_upstream(harness, web):
    slow = harness.standin("--token-delay", "0.05")
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [slow.url]}]})
    name = slow.url.removeprefix("http://")
    conn, resp = web.open_stream(gw.url + "/v1/completions", {
        "model": "m", "prompt": "long", "max_tokens": 400, "stream": True})
    assert resp.status == 200
    assert resp.read1(65536).startswith(b"data: ")
    page = web.get(gw.url + "/metrics").text
    assert web.metric(page, "inferoute_endpoint_in_flight_requests", endpoint=name) == 1.0
    conn.close()
    # the client hung up after one chunk of a 20 s stream
    deadline = time.monotonic() + 10
    while True:
        page = web.get(gw.url + "/metrics").text
        upstream = web.get(slow.url + "/metrics").text
        if (web.metric(page, "inferoute_endpoint_in_flight_requests", endpoint=name) == 0.0
                and web.metric(upstream, "standin_cancelled_total") == 1.0):
            break
        assert time.monotonic() < deadline, page
        time.sleep(0.05)
    assert web.metric(page, "inference_objective_running_requests", model_name="m") == 0.0
    assert web.metric(upstream, "vllm:num_requests_running") == 0.0
    assert web.metric(page, "inference_objective_request_error_total", model_name="m",
                  error_code="client_disconnect") == 1.0


def test_upstream_dying_mid_stream_ends_with_an_error_event(harness, web):
    dying = harness.standin("--die-after", "3", "--token-delay", "0.01")
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [dying.url]}]})
    client = _client(gw)
    stream = client.chat.completions.create(
        model="m", max_tokens=50, stream=True, messages=[{"role": "user", "content": "hi"}])
    got = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["w0 ", "w1 ", "w2 "]  # everything before the crash was relayed
    conn, resp = web.open_stream(gw.url + "/v1/completions",
                                 {"model": "m", "prompt": "x", "max_tokens": 50, "stream": True})
    body = resp.read()  # a clean end of the chunked body, not a hang or a reset
    conn.close()
    assert body.endswith(b"data: [DONE]\n\n") and b'"code":"bad_gateway"' in body
    page = web.get(gw.url + "/metrics").text
    assert web.metric(page, "inference_objective_request_error_total", model_name="m",
                      error_code="502") == 2.0
    assert web.metric(page, "inferoute_endpoint_in_flight_requests",
                      endpoint=dying.url.removeprefix("http://")) == 0.0


def test_failing_endpoint_is_ejected(harness, web):
    good = harness.standin()
    bad = harness.standin("--fail-status", "500")  # (a 503 is back-pressure, not a failure)
    gw = harness.gateway({
        "health": {"outlier": {"consecutiveFailures": 2, "baseEjection": "60s"}},
        "pools": [{"model": "m", "scheduler": "round-robin",
                   "endpoints": [good.url, bad.url]}]})
    deadline = time.monotonic() + 20
    while web.get(gw.url + "/ready").json()["ready_endpoints"]["m"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for i in range(8):
        r = web.post(gw.url + "/v1/completions", json={"model": "m", "prompt": f"{i}"})
        assert r.status_code == 200, r.text
    page = web.get(gw.url + "/metrics").text
    # two failures in a row eject it: no request is sent there afterwards
    assert web.metric(page, "inferoute_upstream_retries_total", pool="m") == 2.0
    assert web.metric(page, "inferoute_endpoint_ready",
                      endpoint=bad.url.removeprefix("http://")) == 0.0
    assert web.get(gw.url + "/ready").json()["ready_endpoints"]["m"] == 1


def test_sigterm_lets_streams_in_flight_finish(harness, web):
    import signal

    slow = harness.standin("--token-delay", "0.02")
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [slow.url]}]})
    conn, resp = web.open_stream(gw.url + "/v1/completions", {
        "model": "m", "prompt": "x", "max_tokens": 60, "stream": True})
    assert resp.read1(65536).startswith(b"data: ")
    gw.proc.send_signal(signal.SIGTERM)
    rest = resp.read()  # the remaining ~1 s of tokens still arrives, then a clean end
    conn.close()
    assert rest.endswith(b"data: [DONE]\n\n") and b'"w59 "' in rest
    assert gw.proc.wait(timeout=15) == 0


def test_responses_api_is_proxied_with_usage(harness, web):
    server = harness.standin()
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [server.url]}]})
    r = web.post(gw.url + "/v1/responses", json={"model": "m", "input": "hello",
                                                  "max_output_tokens": 3})
    assert r.status_code == 200 and r.json()["object"] == "response"
    assert r.headers[SERVED] == server.url.removeprefix("http://")
    conn, resp = web.open_stream(gw.url + "/v1/responses", {
        "model": "m", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 4,
        "stream": True})
    body = resp.read()
    conn.close()
    assert body.count(b"response.output_text.delta") == 8  # event line + type, per delta
    page = web.get(gw.url + "/metrics").text
    # usage from the JSON body (3) and from the response.completed event (4)
    assert web.metric(page, "inference_objective_output_tokens_sum", model_name="m") == 7.0
    assert web.post(gw.url + "/v1/responses", json={"model": "m"}).status_code == 400


@pytest.mark.parametrize("extra, message", [
    (["--tenants", "/nonexistent/tenants.yaml"], "cannot read tenants file"),
    (["--endpoint", "http://127.0.0.1:1", "--scheduler", "nope"], "neither a file nor"),
    (["--port", "{busy}"], "cannot start"),
])
def test_start_up_errors_are_one_clear_line(extra, message):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = [a.replace("{busy}", port) for a in extra]
        if "--port" not in args:
            args += ["--port", "0"]
        r = subprocess.run([sys.executable, "-m", "inferoute", "serve", "--model", "m",
                            "--endpoint", "http://127.0.0.1:2", "--host", "127.0.0.1", *args],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stderr
    assert "Traceback" not in r.stderr and "Unclosed" not in r.stderr, r.stderr


def test_malformed_bodies_get_4xx_json(sim_gateway, web):
    gw, _ = sim_gateway
    bodies = [b"", b"null", b"[]", b'"text"', b"{", b'{"model": 5, "prompt": "x"}',
              b'{"model": "sim-model"}', b'{"model": "sim-model", "prompt": 7}',
              b'{"model": "sim-model", "prompt": [1, "a"]}',
              b'{"model": "sim-model", "prompt": "x", "max_tokens": -1}',
              b'{"model": "sim-model", "prompt": "x", "max_tokens": "many"}',
              b'{"model": "sim-model", "prompt": "x", "stream": "yes"}',
              b'{"model": "sim-model", "messages": [{"role": "user", "content": 5}]}',
              b'{"model": "sim-model", "messages": [{"content": "no role"}]}',
              b'{"model": "sim-model", "messages": [[]]}',
              b'{"model": "sim-model", "messages": []}',
              b'{"model": "sim-model", "messages": [{"role": "user", "content": [7]}]}',
              b'\xff\xfe\x00garbage', b'{"model": "sim-model", "prompt": "\\ud800"}']
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/responses"):
        for body in bodies:
            r = web.post(gw.url + path, content=body)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
            assert r.json()["error"]["message"], (path, body)
