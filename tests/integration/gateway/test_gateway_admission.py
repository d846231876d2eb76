"""`inferoute serve` with an `admission:` section: shedding, waiting, release, model routes,
usage injection (the core's rules are unit-tested in tests/unit/admission)."""

from __future__ import annotations

import threading
import time

import openai

OBJECTIVE = "x-gateway-inference-objective"


def _post(web, gw, objective: str | None = None, **extra):
    import json
    import urllib.request
    req = urllib.request.Request(
        gw.url + "/v1/completions", method="POST",
        data=json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2, **extra}).encode(),
        headers={"Content-Type": "application/json", **({OBJECTIVE: objective}
                                                        if objective else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_shed_wait_expire_and_release(harness, web):
    server = harness.standin("--waiting", "10")  # above queueDepthThreshold 5: saturated
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [server.url]}], "admission": {
        "objectives": [{"name": "batch", "priority": -1},
                       {"name": "impatient", "priority": 1, "ttl": "300ms"},
                       {"name": "critical", "priority": 10}],
        "flowControl": {"ttl": "30s", "retryAfter": "2s"}}})

    status, headers, body = _post(web, gw, "batch")
    assert status == 429 and body["error"]["code"] == "overloaded"
    assert headers["Retry-After"] == "2"

    status, _, body = _post(web, gw, "impatient")
    assert status == 429 and body["error"]["code"] == "queue_timeout"

    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(r=_post(web, gw, "critical")))
    waiter.start()
    time.sleep(0.5)
    assert not result, "a critical request went through a saturated pool"
    page = web.get(gw.url + "/metrics").text
    assert web.metric(page, "inference_extension_flow_control_queue_size",
                      inference_pool="m", priority="10") == 1.0
    web.post(server.url + "/admin/waiting", json={"waiting": 0})
    waiter.join(timeout=20)
    assert result["r"][0] == 200, result
    page = web.get(gw.url + "/metrics").text
    assert web.metric(page, "inference_objective_request_error_total", error_code="429",
                      model_name="m") == 2.0


def test_model_route_renames_both_ways_and_usage_is_always_known(harness, web):
    server = harness.standin()
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [server.url]}], "admission": {
        "flowControl": {"enabled": False},
        "modelRoutes": [{"model": "chat", "targets": [{"model": "m", "weight": 1}]}]}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    assert "chat" in {m.id for m in client.models.list().data}

    out = client.completions.create(model="chat", prompt="hello", max_tokens=3)
    assert out.model == "chat" and out.usage.completion_tokens == 3

    chunks = list(client.chat.completions.create(
        model="chat", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": "hi"}]))
    assert all(c.model == "chat" for c in chunks)
    assert all(c.choices for c in chunks), "the injected usage chunk reached the client"
    page = web.get(gw.url + "/metrics").text
    # usage of both requests was still read (3 + 4 completion tokens)
    assert web.metric(page, "inference_objective_output_tokens_sum", model_name="chat",
                      target_model_name="m") == 7.0

    asked = list(client.chat.completions.create(
        model="chat", max_tokens=2, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}]))
    assert asked[-1].usage.completion_tokens == 2 and asked[-1].model == "chat"



def test_api_keys_models_and_rate_limits(harness, web, tmp_path):
    import hashlib
    import json
    import urllib.request

    server = harness.standin()
    secret, other = "sk-test-0123456789abcdef", "sk-other-0123456789abcdef"
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(json.dumps({"tenants": [
        {"name": "team-a", "keySha256": hashlib.sha256(secret.encode()).hexdigest(),
         "models": ["m"], "requestsPerMinute": 2, "burstRequests": 2},
        {"name": "team-b", "key": other, "models": ["nothing-*"]}]}))
    gw = harness.gateway({"tenants": str(tenants),
                          "pools": [{"model": "m", "endpoints": [server.url]}]})

    def call(key: str | None):
        req = urllib.request.Request(
            gw.url + "/v1/completions", method="POST",
            data=json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read())

    assert call(None)[0] == 401
    status, _, body = call("sk-wrong-0123456789abcdef")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, body = call(other)
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    assert call(secret)[0] == 200 and call(secret)[0] == 200
    status, headers, body = call(secret)  # burst of 2 spent, 2/min refills slowly
    assert status == 429 and int(headers["Retry-After"]) >= 1
    for text in (web.get(gw.url + "/metrics").text, gw.log()):
        assert secret not in text and other not in text


def test_a_release_rule_holds_requests_without_an_admission_section(harness, web):
    """A release rule (`kv-fit-filter`, set to hold always) needs a queue to hold requests
    in: the gateway gives its pool one although the config has no admission section
    (AdmissionDriver.for_gateway)."""
    server = harness.standin("--token-delay", "0.02")  # 4,096 blocks of 16 tokens: 65,536
    holding = {"plugins": [{"type": "kv-fit-filter", "parameters": {"recomputeToHold": 0}},
                           {"type": "max-score-picker"}],
               "schedulingProfiles": [{"name": "default", "plugins": [
                   {"pluginRef": "kv-fit-filter"}, {"pluginRef": "max-score-picker"}]}]}
    gw = harness.gateway({"pools": [{"model": "m", "endpoints": [server.url],
                                     "scheduler": holding}]})
    # each request's KV need is half its max_tokens: two of them do not fit the replica
    big = {"model": "m", "max_tokens": 100_000, "stream": True}
    conn_a, resp_a = web.open_stream(gw.url + "/v1/completions", {**big, "prompt": "alpha"})
    assert resp_a.status == 200 and resp_a.readline().startswith(b"data:")
    result: dict = {}

    def second() -> None:
        conn, resp = web.open_stream(gw.url + "/v1/completions", {**big, "prompt": "beta"})
        result["status"], result["line"] = resp.status, resp.readline()
        conn.close()

    waiter = threading.Thread(target=second)
    waiter.start()
    deadline = time.monotonic() + 20
    while web.metric(web.get(gw.url + "/metrics").text,
                     "inference_extension_flow_control_queue_size", inference_pool="m") != 1.0:
        assert time.monotonic() < deadline, "the second request never waited in the gateway"
        time.sleep(0.05)
    assert not result, "the second request was sent while the first held the replica's KV"
    conn_a.close()  # the first one's client goes away: its need is released, the second goes
    waiter.join(timeout=20)
    assert result["status"] == 200 and result["line"].startswith(b"data:")
