"""Bad input is always a 4xx OpenAI-style JSON error, and never counts against a replica
(issue 18, items 1-4): deep nesting, compressed bodies, non-UTF-8 keys, `Expect`, HEAD,
sampling fields, and a model server's plain-text error wrapped in the gateway's shape.

In-process stand-in replicas and the real `serve()` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inproc import Gateway, Replica, start_gateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    reps = [await Replica().start(), await Replica().start()]
    yield reps
    for r in reps:
        await r.close()


@pytest.fixture
async def gateway(replicas: list[Replica], tmp_path: Path) -> AsyncIterator[Gateway]:
    adm = {"objectives": [{"name": "critical", "priority": 10}]}
    gw = await start_gateway(replicas, tmp_path, admission=adm)
    yield gw
    await gw.close()


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int | None = None,
                      kind: str | None = None) -> dict:
    code, headers, body = answer
    assert 400 <= code < 500 if status is None else code == status, (code, body[:300])
    assert headers.get("Content-Type", "").startswith("application/json"), (headers, body)
    err = json.loads(body)["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    if kind is not None:
        assert err["type"] == kind, err
    return err


@pytest.mark.parametrize("depth", [255, 300, 600, 1023])
@pytest.mark.parametrize("where", ["tool_calls", "content_part", "metadata"])
async def test_deep_nesting_is_400_and_leaves_no_count(gateway: Gateway, depth: int,
                                                       where: str) -> None:
    msg: dict = {"role": "user", "content": "hi"}
    body: dict = {"model": "m", "messages": [msg]}
    if where == "tool_calls":
        msg["tool_calls"] = "NEST"
    elif where == "content_part":
        msg["content"] = [{"type": "weird", "x": "NEST"}]
    else:
        body["metadata"] = {"x": "NEST"}
    deep = "[" * depth + '"x"' + "]" * depth
    raw = json.dumps(body).replace('"NEST"', deep).encode()
    assert_json_error(await gateway.call("POST", "/v1/chat/completions", data=raw,
                                         headers={"Content-Type": "application/json"}), 400)
    assert await gateway.metric("inference_objective_running_requests") == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies(gateway: Gateway, replicas: list[Replica],
                                 encoding: str) -> None:
    body = json.dumps({"model": "m", "prompt": "hello", "max_tokens": 3}).encode()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    hdrs = {"Content-Type": "application/json", "Content-Encoding": encoding}
    status, _, answer = await gateway.call("POST", "/v1/completions", data=packed,
                                           headers=hdrs)
    assert status == 200, answer
    assert json.loads(answer)["usage"]["completion_tokens"] == 3
    for r in replicas:  # the body went on decoded, so no Content-Encoding with it
        assert all("content-encoding" not in h for h in r.seen_headers)
    assert_json_error(await gateway.call("POST", "/v1/completions", data=b"not " + packed,
                                         headers=hdrs), 400)
    hits = sum(r.hits for r in replicas)
    for _ in range(6):  # bad compressed input never reaches (nor ejects) a replica
        assert_json_error(await gateway.call("POST", "/v1/completions", data=b"\x1f\x8bjunk",
                                             headers=hdrs), 400)
    assert sum(r.hits for r in replicas) == hits
    assert (await gateway.complete())[0] == 200


async def test_unknown_content_encoding_is_415(gateway: Gateway) -> None:
    assert_json_error(await gateway.call(
        "POST", "/v1/completions", data=b"{}",
        headers={"Content-Type": "application/json", "Content-Encoding": "zstd-x"}), 415)


async def test_expect_junk_is_a_json_417(gateway: Gateway) -> None:
    body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode()
    assert_json_error(await gateway.call("POST", "/v1/completions", data=body,
                                         headers={"Expect": "junk",
                                                  "Content-Type": "application/json"}), 417)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/responses",
                                  "/nope"])
async def test_head_and_other_methods_answer_at_once(gateway: Gateway, path: str) -> None:
    status, headers, body = await gateway.call("HEAD", path)
    assert status in (404, 405) and body == b""
    assert headers["Content-Type"].startswith("application/json")
    assert_json_error(await gateway.call("PUT", path))


@pytest.mark.parametrize("field,value", [
    ("temperature", "x"), ("temperature", -1), ("temperature", [1]),
    ("top_p", 2), ("top_p", "a"), ("n", 0), ("n", "2"), ("n", 1.5), ("n", True),
    ("presence_penalty", 5), ("frequency_penalty", "x"), ("seed", "s"), ("seed", 1.5),
    ("stop", 5), ("stop", [1, 2]), ("logprobs", "x"), ("top_k", "x"), ("best_of", 0),
    ("user", 5), ("stream_options", 5)])
async def test_sampling_fields_are_validated(gateway: Gateway, field: str,
                                             value: object) -> None:
    err = assert_json_error(await gateway.complete(**{field: value}), 400,
                            "invalid_request_error")
    assert err["param"] == field


async def test_valid_sampling_fields_pass(gateway: Gateway) -> None:
    status, _, body = await gateway.complete(temperature=0.7, top_p=1, n=1, seed=3,
                                             stop=["x"], presence_penalty=0.5)
    assert status == 200, body


async def test_non_json_upstream_error_is_wrapped(gateway: Gateway,
                                                  replicas: list[Replica]) -> None:
    for r in replicas:
        r.status, r.body, r.ctype = 404, b"404: Not Found", "text/plain"
    status, _, body = await gateway.call("POST", "/v1/responses",
                                         json={"model": "m", "input": "hi"})
    err = assert_json_error((status, {"Content-Type": "application/json"}, body), 404)
    assert "404: Not Found" in err["message"]
    assert any(r.name in err["message"] for r in replicas)


async def test_server_errors_say_server_error(gateway: Gateway,
                                              replicas: list[Replica]) -> None:
    for r in replicas:  # JSON errors of the model server itself are relayed as they are
        r.status, r.body, r.ctype = 500, b"boom", "text/plain"
    status, headers, body = await gateway.complete()
    assert status >= 500
    err = json.loads(body)["error"]
    assert err["type"] != "invalid_request_error" and err["code"], err


async def raw_request(url: str, data: bytes) -> tuple[int, bytes]:
    """Raw bytes to the gateway (headers a client library would refuse); (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("header", [b"Authorization: Bearer sk-\xff\xfe\xc3", b"x-api-key: \xff",
                                    b"Authorization: \xc3\x28"])
async def test_non_utf8_keys_are_401(replicas: list[Replica], tmp_path: Path,
                                     header: bytes) -> None:
    keys = tmp_path / "tenants.yaml"
    keys.write_text("tenants:\n- name: a\n  key: sk-good-key-1\n  requestsPerMinute: 600\n")
    gw = await start_gateway(replicas, tmp_path, tenants=str(keys))
    try:
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2}).encode()
        status, answer = await raw_request(gw.url, (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n" + header + b"\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body) + body))
        assert status == 401, answer
        assert json.loads(answer)["error"]["type"] == "authentication_error"
        ok = await gw.call("POST", "/v1/completions", data=body,
                           headers={"Authorization": "Bearer sk-good-key-1"})
        assert ok[0] == 200
    finally:
        await gw.close()
