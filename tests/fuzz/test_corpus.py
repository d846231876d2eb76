"""The malformed-request corpus (corpus.py) against the gateway and against the endpoint picker:
zero 5xx, zero non-JSON errors, and the books close afterwards.

Gateway: the real `serve()` in this process, in front of an in-process stand-in replica that
refuses what vLLM refuses; every case on its own connection, raw bytes. Picker: the ext_proc
protocol state machine fed the same bodies as Envoy would send them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import API, Case, cases, parse_answer  # noqa: E402
from inproc import Replica, start_gateway  # noqa: E402

from inferoute.core.endpoint import Endpoint, Pool  # noqa: E402
from inferoute.core.router import ModelPool, Router  # noqa: E402
from inferoute.core.scheduling.config import parse_config  # noqa: E402
from inferoute.core.scheduling.scheduler import Scheduler  # noqa: E402
from inferoute.extproc.protocol import EndpointPicker  # noqa: E402

pytestmark = pytest.mark.timeout(300)
CORPUS = cases()
#: the corpus must hold at least this many requests that are refused as malformed
MIN_REFUSED = 500


def test_corpus_is_large_and_distinct() -> None:
    keys = {(c.method, c.path, c.headers, c.body) for c in CORPUS}
    assert len(keys) == len(CORPUS) >= MIN_REFUSED


async def _send(port: int, case: Case) -> tuple[int | None, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(case.raw())
        answer = await reader.read()
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    return parse_answer(answer)


async def test_gateway_answers_every_case_with_4xx_json_or_success(tmp_path: Path) -> None:
    rep = await Replica().start()
    adm = {"objectives": [{"name": "critical", "priority": 10}]}
    gw = await start_gateway([rep], tmp_path, admission=adm, maxBodyBytes=1 << 20)
    port = int(gw.url.rsplit(":", 1)[1])
    bad: list[str] = []
    statuses: Counter[int] = Counter()
    try:
        for case in CORPUS:
            status, headers, body = await _send(port, case)
            if status is None:
                bad.append(f"{case.name}: closed without an answer")
                continue
            statuses[status] += 1
            if status >= 500:
                bad.append(f"{case.name}: {status} {body[:120]!r}")
            elif status >= 400 and case.method != "HEAD":
                try:
                    err = json.loads(body)["error"]
                    assert {"message", "type", "param", "code"} <= set(err)
                    assert headers.get("content-type", "").startswith("application/json")
                except (ValueError, KeyError, TypeError, AssertionError):
                    bad.append(f"{case.name}: {status} not an OpenAI JSON error: {body[:120]!r}")
        assert not bad, "\n".join(bad[:40])
        refused = sum(n for s, n in statuses.items() if 400 <= s < 500)
        assert refused >= MIN_REFUSED, statuses
        print(f"\n{len(CORPUS)} cases against the gateway: {dict(sorted(statuses.items()))}")
        # the books close: nothing in flight, nothing queued, still serving
        for gauge in ("inferoute_endpoint_in_flight_requests",
                      "inference_objective_running_requests",
                      "inference_extension_flow_control_queue_size"):
            assert await gw.metric(gauge) == 0, gauge
        assert (await gw.complete())[0] == 200
    finally:
        await gw.close()
        await rep.close()


def _router() -> Router:
    cfg = parse_config({"plugins": [{"type": "round-robin-picker"}],
                        "schedulingProfiles": [{"name": "p", "plugins": [
                            {"pluginRef": "round-robin-picker"}]}]})
    pool = Pool("m", [Endpoint(host=f"10.0.0.{i + 1}", port=8000) for i in range(2)])
    return Router([ModelPool(model="m", pool=pool, scheduler=Scheduler(cfg, seed=1))])


def _picker_messages(case: Case) -> list[object]:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    hdrs = {":method": case.method, ":path": case.path, **{k.lower(): v
                                                            for k, v in case.headers}}
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode("utf-8", "surrogateescape"))
          for k, v in hdrs.items()]
    head = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=hv), end_of_stream=not case.body))
    if not case.body:
        return [head]
    return [head, pb.ProcessingRequest(request_body=pb.HttpBody(body=case.body,
                                                                end_of_stream=True))]


def test_picker_answers_every_case_with_4xx_json_or_a_destination() -> None:
    router = _router()
    picker = EndpointPicker(router)
    bad: list[str] = []
    outcomes: Counter[str] = Counter()
    body_cases = [c for c in CORPUS if c.method == "POST" and c.path in API]
    for case in body_cases:
        stream = picker.stream()
        out: list = []
        try:
            for msg in _picker_messages(case):
                out += stream.handle(msg, 0.0)
        except Exception as exc:  # noqa: BLE001 - what the gRPC stream would die of
            bad.append(f"{case.name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            stream.close(0.0)
        immediate = [r for r in out if r.WhichOneof("response") == "immediate_response"]
        if immediate:
            ir = immediate[0].immediate_response
            outcomes[str(ir.status.code)] += 1
            if not 400 <= ir.status.code < 500:
                bad.append(f"{case.name}: {ir.status.code}")
                continue
            try:
                err = orjson.loads(ir.body)["error"]
                assert {"message", "type", "code"} <= set(err)
            except (ValueError, KeyError, TypeError, AssertionError):
                bad.append(f"{case.name}: not a JSON error: {ir.body[:100]!r}")
        elif out and out[0].WhichOneof("response") == "request_headers":
            outcomes["routed"] += 1
        else:
            bad.append(f"{case.name}: no answer {[r.WhichOneof('response') for r in out]}")
    assert not bad, "\n".join(bad[:40])
    assert sum(n for k, n in outcomes.items() if k != "routed") >= MIN_REFUSED, outcomes
    for ep in router.pools["m"].pool:  # every stream closed: nothing left in flight
        assert ep.in_flight_requests == 0
    print(f"\n{len(body_cases)} cases against the picker: {dict(outcomes)}")
