"""No request locks a tenant out, and no key reaches a log (issue 18, items 10-11).

A pre-charge is settled with the actual usage (zero when the request was rejected), capped at
the model's context length, and a bucket's debt and Retry-After are bounded by the window.
Keys in a query string or a header never reach the access log or any other log line.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from inproc import MAX_MODEL_LEN, Replica, start_gateway
from inferoute.core.admission import MemoryRateLimiter
from inferoute.core.admission.ratelimit import (WINDOW, Limits, estimate_tokens,
                                               sequences_requested)
from inferoute.core.errors import TooManyRequests
from inferoute.gateway.redact import RedactFilter, install, redact

pytestmark = pytest.mark.timeout(60)
KEY = "sk-tenant-a-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_a_rejected_huge_request_does_not_lock_the_tenant_out(tmp_path: Path) -> None:
    reps = [await Replica().start()]
    keys = tmp_path / "tenants.yaml"
    keys.write_text(yaml.safe_dump({"tenants": [
        {"name": "a", "key": KEY, "tokensPerMinute": 6000, "requestsPerMinute": 6000}]}))
    gw = await start_gateway(reps, tmp_path, tenants=str(keys))
    try:
        huge = {"model": "m", "prompt": "hi", "max_tokens": 2 ** 62}
        for _ in range(3):  # refused by the model server (beyond its context)
            code, _, body = await gw.call("POST", "/v1/completions", json=huge, headers=AUTH)
            assert code == 400, body
        for _ in range(5):  # the tenant is not locked out
            code, headers, body = await gw.call(
                "POST", "/v1/completions", headers=AUTH,
                json={"model": "m", "prompt": "hello", "max_tokens": 3})
            assert code == 200, (headers.get("Retry-After"), body)
    finally:
        await gw.close()
        await reps[0].close()


def test_pre_charge_is_capped_at_the_context_length() -> None:
    assert estimate_tokens(10, 2 ** 62, MAX_MODEL_LEN) == MAX_MODEL_LEN
    assert estimate_tokens(10, 20, MAX_MODEL_LEN) == 30
    assert estimate_tokens(10, 2 ** 62) == 10 + 2 ** 62  # unknown context: as asked


def test_pre_charge_counts_every_sequence() -> None:
    """`n` (or a larger `best_of`) completions of up to `max_tokens` each; the prompt once;
    each completion capped at what the context leaves after the prompt."""
    assert estimate_tokens(10, 20, None, 4) == 90
    assert estimate_tokens(10, 2 ** 62, MAX_MODEL_LEN, 3) == 10 + 3 * (MAX_MODEL_LEN - 10)
    assert estimate_tokens(10, None, MAX_MODEL_LEN, 3) == 10  # no bound asked: the prompt
    assert [sequences_requested(b) for b in (
        {}, {"n": 4}, {"best_of": 5}, {"n": 2, "best_of": 6}, {"n": 3, "best_of": None},
        {"n": True})] == [1, 4, 5, 6, 3, 1]


async def test_gateway_pre_charges_n_sequences_and_settles_with_usage(tmp_path: Path) -> None:
    """What serve's tenant gate reserves for `n: 4` and what it keeps after the usage."""
    from inferoute.core.request import parse_request
    from inferoute.gateway.tenants import Tenants
    keys = tmp_path / "tenants.yaml"
    keys.write_text(yaml.safe_dump({"tenants": [{"name": "a", "key": KEY,
                                                 "tokensPerMinute": 60_000}]}))  # burst 3000
    tenants = Tenants.from_config(str(keys), None)
    assert tenants is not None
    body = {"model": "m", "prompt": "word " * 40, "max_tokens": 100, "n": 4}
    req = parse_request("completions", body, {"authorization": AUTH["Authorization"]},
                        request_id="r1")
    adm = await tenants.admit(req, 0.0, context_length=MAX_MODEL_LEN)
    expected = req.prompt_tokens_estimate + 4 * 100
    assert tenants.limiter.level("a", "tok", 0.0) == pytest.approx(3000 - expected)
    await tenants.settle(adm, {"prompt_tokens": 41, "completion_tokens": 4 * 37}, 0.0)
    assert tenants.limiter.level("a", "tok", 0.0) == pytest.approx(3000 - 41 - 4 * 37)
    await tenants.close()


@pytest.mark.parametrize("actual", [10 ** 6, 10 ** 12, 2 ** 62])
def test_debt_and_retry_after_are_bounded_by_the_window(actual: int) -> None:
    lim = MemoryRateLimiter()
    limits = Limits(tokens_per_minute=600)
    res = lim.reserve_now("a", limits, 10, 0.0)
    lim.reconcile_now(res, actual, 0.0)  # far more than a minute's worth
    with pytest.raises(TooManyRequests) as exc:
        lim.reserve_now("a", limits, 10, 0.0)
    assert exc.value.retry_after is not None and exc.value.retry_after <= WINDOW
    assert int(exc.value.headers["Retry-After"]) <= WINDOW
    lim.reserve_now("a", limits, 10, WINDOW + 2.0)  # and it passes once the window is over


async def test_keys_never_reach_the_logs(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reps = [await Replica().start()]
    # serve(access_log=True) as `inferoute serve --access-log` runs it (which also puts the
    # RedactFilter on its log handlers, as here)
    install([caplog.handler])
    from inferoute.datalayer.serving_config import parse_serving_config
    from inferoute.gateway.app import serve
    ready = tmp_path / "ready-access"
    stop = asyncio.Event()
    cfg = parse_serving_config({"host": "127.0.0.1", "port": 0,
                                "pools": [{"model": "m", "endpoints": [reps[0].url]}]})
    task = asyncio.create_task(serve(cfg, ready_file=str(ready), stop=stop, access_log=True))
    try:
        while not (ready.exists() and ready.read_text()):
            await asyncio.sleep(0.01)
        import aiohttp
        url = f"http://127.0.0.1:{ready.read_text()}"
        async with aiohttp.ClientSession() as session:
            for path in (f"/v1/completions?api_key={KEY}", f"/v1/models?token={KEY}&x=1",
                         f"/nope?key={KEY}"):
                async with session.post(url + path, headers={**AUTH, "x-api-key": KEY},
                                        json={"model": "m", "prompt": "x"}) as r:
                    await r.read()
        while "/nope" not in caplog.text:  # the access log line of the last request
            await asyncio.sleep(0.01)
        leaks = [line for line in caplog.text.splitlines() if KEY in line]
        assert not leaks, leaks
        assert "api_key=[REDACTED]" in caplog.text
    finally:
        stop.set()
        await task
        import signal
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await reps[0].close()


@pytest.mark.parametrize("line", [
    "GET /v1/models?api_key={k} HTTP/1.1", "headers: {{'authorization': 'Bearer {k}'}}",
    "x-api-key: {k}", "upstream said: invalid key {k}", "POST /?access_token={k}&a=b"])
def test_redact_filter_masks_every_record(line: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (line.format(k=KEY),),
                               None)
    RedactFilter().filter(record)
    assert KEY not in record.getMessage() and "[REDACTED]" in record.getMessage()
    assert redact("GET /v1/models?model=m HTTP/1.1") == "GET /v1/models?model=m HTTP/1.1"
