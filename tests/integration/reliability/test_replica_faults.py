"""With one healthy replica left no accepted request fails (issue 18, items 5-7b; issue 14,
item 7): back-pressure (429/503) is retried elsewhere and backed off, a replica serving
another model is found (its /v1/models, or a 404 for the pool's model) and taken out, every
candidate is tried, a stream that failed before a byte was relayed is retried, and when every
replica's metrics are stale the gateway routes on its own in-flight counts.

In-process stand-in replicas and the real `serve()` on 127.0.0.1; no timed assertions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from inproc import Replica, start_gateway

pytestmark = pytest.mark.timeout(60)


async def replicas(n: int, model: str = "m") -> list[Replica]:
    return [await Replica(model).start() for _ in range(n)]


async def close_all(reps: list[Replica]) -> None:
    for r in reps:
        await r.close()


@pytest.mark.parametrize("status", [429, 503])
async def test_back_pressure_is_retried_and_backed_off(tmp_path: Path, status: int) -> None:
    busy, good = reps = await replicas(2)
    busy.status, busy.headers = status, {"Retry-After": "30"}
    gw = await start_gateway(reps, tmp_path)
    try:
        for _ in range(20):
            code, headers, body = await gw.complete()
            assert code == 200, body
            assert headers["x-gateway-destination-endpoint-served"] == good.name
        assert busy.hits == 1  # asked once, then left alone for its Retry-After
        assert await gw.metric("inferoute_endpoint_in_flight_requests") == 0
    finally:
        await gw.close()
        await close_all(reps)


@pytest.mark.parametrize("status", [500, 503])
async def test_three_of_four_failing_every_request_succeeds(tmp_path: Path,
                                                            status: int) -> None:
    reps = await replicas(4)
    for r in reps[:3]:
        r.status = status
    gw = await start_gateway(reps, tmp_path)
    try:
        results = await asyncio.gather(*(gw.complete() for _ in range(40)))
        assert [r[0] for r in results] == [200] * 40, [r[2] for r in results if r[0] != 200]
        assert reps[3].hits == 40
    finally:
        await gw.close()
        await close_all(reps)


async def test_wrong_model_replica_is_found_at_start(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    good, = await replicas(1)
    wrong, = await replicas(1, model="other")
    gw = await start_gateway([good, wrong], tmp_path, ready=1)
    try:
        while True:  # its /v1/models is read at start
            code, _, body = await gw.call("GET", "/ready")
            problems = json.loads(body).get("problems", {})
            if problems:
                break
            await asyncio.sleep(0.02)
        assert problems == {"m": [f"{wrong.name} serves 'other', not 'm'"]}
        assert code == 200 and json.loads(body)["ready_endpoints"] == {"m": 1}
        for _ in range(10):
            assert (await gw.complete())[0] == 200
        assert wrong.hits == 0
        assert f"endpoint {wrong.name} serves 'other', not the pool's model 'm'" in caplog.text
    finally:
        await gw.close()
        await close_all([good, wrong])


async def test_model_switch_is_found_on_the_next_scrape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica restarted with another model is out from the next scrape that names it (and
    back when it serves the pool's model again), without the periodic /v1/models read."""
    from inferoute.datalayer import endpoint_health as health
    monkeypatch.setattr(health, "MODELS_INTERVAL", 3600.0)  # only the start-up read
    good, turned = await replicas(2)
    gw = await start_gateway([good, turned], tmp_path)
    try:
        turned.standin.model = "other"  # its /metrics, /v1/models and answers change
        while (problems := await _problems(gw)) == {}:
            await asyncio.sleep(0.02)  # scrapes come every 50 ms
        assert problems == {"m": [f"{turned.name} serves 'other', not 'm'"]}
        hits = turned.hits
        for _ in range(6):
            assert (await gw.complete())[0] == 200
        assert turned.hits == hits
        turned.standin.model = "m"
        while await _problems(gw):
            await asyncio.sleep(0.02)
        for _ in range(6):
            assert (await gw.complete())[0] == 200
        assert turned.hits == hits + 3  # round robin over both again
    finally:
        await gw.close()
        await close_all([good, turned])


async def _problems(gw: Any) -> dict[str, Any]:
    _, _, body = await gw.call("GET", "/ready")
    return json.loads(body).get("problems", {})


async def test_wrong_model_found_by_its_404(tmp_path: Path) -> None:
    good, = await replicas(1)
    wrong, = await replicas(1, model="other")
    wrong.models_status = 500  # its /v1/models cannot tell
    gw = await start_gateway([good, wrong], tmp_path)
    try:
        for _ in range(10):
            code, _, body = await gw.complete()
            assert code == 200, body
        assert wrong.hits == 1  # its 404 for the pool's model took it out
        _, _, body = await gw.call("GET", "/ready")
        assert json.loads(body)["ready_endpoints"] == {"m": 1}
    finally:
        await gw.close()
        await close_all([good, wrong])


async def test_no_replica_serves_the_model(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14, item 7: warned at start and on /ready; requests answered in the gateway's
    shape, saying what the replicas serve."""
    reps = await replicas(2, model="other")
    gw = await start_gateway(reps, tmp_path, ready=0)
    try:
        while True:
            code, _, body = await gw.call("GET", "/ready")
            if json.loads(body).get("problems"):
                break
            await asyncio.sleep(0.02)
        assert code == 503 and "serves 'other', not 'm'" in json.loads(body)["error"]["message"]
        code, _, body = await gw.complete()
        err = json.loads(body)["error"]
        assert code == 503 and err["code"] == "model_not_served", err
        assert "serves 'other', not 'm'" in err["message"]
        assert "pool 'm': no endpoint serves model 'm' (they serve 'other')" in caplog.text
    finally:
        await gw.close()
        await close_all(reps)


async def test_stream_failing_before_a_byte_is_retried(tmp_path: Path) -> None:
    cut, good = reps = await replicas(2)
    cut.standin.die_after = 0  # headers, half an event, then the connection drops
    gw = await start_gateway(reps, tmp_path)
    try:
        for _ in range(8):
            code, headers, body = await gw.complete(stream=True)
            assert code == 200
            assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body, body
            assert headers["x-gateway-destination-endpoint-served"] == good.name
        assert cut.hits >= 1
    finally:
        await gw.close()
        await close_all(reps)


async def test_all_metrics_stale_routes_on_own_counts(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    reps = await replicas(2)
    gw = await start_gateway(reps, tmp_path, readyWindow="300ms")
    try:
        for r in reps:
            r.metrics_frozen.clear()
        while True:  # every replica unready: its scrapes stopped
            code, _, _ = await gw.call("GET", "/ready")
            if code == 503:
                break
            await asyncio.sleep(0.02)
        results = [await gw.complete() for _ in range(6)]
        assert [r[0] for r in results] == [200] * 6
        assert {r[1]["x-gateway-destination-endpoint-served"] for r in results} == \
            {r.name for r in reps}  # the fewest in flight: spread, not piled on one
        assert await gw.metric("inferoute_stale_metrics_fallback_total") == 6
        assert "every endpoint's metrics are stale" in caplog.text
    finally:
        for r in reps:
            r.metrics_frozen.set()
        await gw.close()
        await close_all(reps)


async def test_single_wrong_model_replica_answered_in_gateway_shape(tmp_path: Path) -> None:
    """Its /v1/models cannot tell; its 404 for the pool's model becomes the gateway's 503
    (issue 14, item 7), not the model server's own error shape."""
    wrong, = await replicas(1, model="other")
    wrong.models_status = 500
    gw = await start_gateway([wrong], tmp_path)
    try:
        for _ in range(2):
            code, _, body = await gw.complete()
            err = json.loads(body)["error"]
            assert code == 503 and err["code"] == "model_not_served", body
        assert wrong.hits == 1
    finally:
        await gw.close()
        await close_all([wrong])
