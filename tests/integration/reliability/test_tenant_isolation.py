"""Tenants: limits hold within 5% over a virtual minute through the gate (tokens charged by
actual usage); keys never appear in a real gateway's debug and access logs or in /metrics."""

from __future__ import annotations

import hashlib
import random

import pytest
import yaml
from reliability_kit import call, get

from inferoute.core.admission import MemoryRateLimiter
from inferoute.core.errors import TooManyRequests
from inferoute.tenants import KeyStore, TenantGate

SECRET, OTHER, WRONG = ("sk-live-7c1d0e9a5b3f4e2a", "sk-team-b-4f0a9c2d7e1b", "sk-wrong-0a1b2c3d4e5f")


@pytest.mark.parametrize("rpm,tpm", [(120, 0), (0, 30_000), (300, 20_000)])
async def test_two_tenants_within_5_percent_over_a_virtual_minute(rpm: int, tpm: int) -> None:
    limits = {**({"requestsPerMinute": rpm} if rpm else {}),
              **({"tokensPerMinute": tpm} if tpm else {})}
    store = KeyStore.from_yaml(yaml.safe_dump({"tenants": [
        {"name": "a", "key": SECRET, **limits}, {"name": "b", "key": OTHER, **limits}]}))
    gate = TenantGate(store, MemoryRateLimiter())
    rng = random.Random(7)
    for key in (SECRET, OTHER):  # b hammers its own bucket too: a's share is unaffected
        admitted = tokens = 0
        t = 0.0
        while t < 60.0:  # a client retrying every 10 ms, far above the limit
            try:
                adm = await gate.admit({"authorization": f"Bearer {key}"}, "m", 100, t)
            except TooManyRequests:
                t += 0.01
                continue
            used = rng.randint(20, 180)  # actual usage differs from the 100-token estimate
            await gate.settle(adm, used, t + 0.005)
            admitted += 1
            tokens += used
            t += 0.01
        if rpm:  # (with a token limit too, the tighter of the two binds)
            assert (0 if tpm else rpm) <= admitted <= rpm * 1.05 + 1, admitted
        if tpm:
            assert tpm * 0.95 <= tokens <= tpm * 1.05 + 200, tokens


def test_keys_never_logged_or_exported(harness, tmp_path):
    sim = harness.sim(1)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": [
        {"name": "team-a", "keySha256": hashlib.sha256(SECRET.encode()).hexdigest(),
         "models": ["sim-model"], "requestsPerMinute": 3, "burstRequests": 3},
        {"name": "team-b", "key": OTHER, "models": ["other-*"]}]}))
    gw = harness.serve({"tenants": str(tenants), "pools": [
        {"model": "sim-model", "endpoints": sim}]}, "--log-level", "debug", "--access-log")
    body = {"model": "sim-model", "prompt": "hello", "max_tokens": 3, "stream": True}
    seen = [call(gw.url + "/v1/completions", body, {"Authorization": f"Bearer {SECRET}"}),
            call(gw.url + "/v1/completions", dict(body, stream=False), {"x-api-key": SECRET}),
            call(gw.url + "/v1/completions", body, {"Authorization": f"Bearer {OTHER}"}),
            call(gw.url + "/v1/completions", body, {"Authorization": f"Bearer {WRONG}"}),
            call(gw.url + "/v1/completions", body, {"x-api-key": WRONG}),
            call(gw.url + "/v1/completions", body, {"Authorization": f"Bearer {SECRET}"}),
            call(gw.url + "/v1/completions", body, {"Authorization": f"Bearer {SECRET}"})]
    assert [o.status for o in seen] == [200, 200, 403, 401, 401, 200, 429]
    assert all(o.clean() for o in seen)
    metrics = get(gw.url + "/metrics").text
    harness.close()  # stop every process: its whole log is written
    log = gw.log()
    assert "inferoute.access" in log or '"POST /v1/completions' in log  # the access log ran
    for key in (SECRET, OTHER, WRONG):
        for part in (key, key[-12:]):
            assert part not in log and part not in metrics, part
        assert hashlib.sha256(key.encode()).hexdigest() not in log
