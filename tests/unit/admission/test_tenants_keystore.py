"""Key store: hashed storage, loading from YAML / env, 401 / 403 / 429, and keys never in
errors or reprs."""

from __future__ import annotations

import hashlib
import logging

import pytest

from inferoute.core.admission.ratelimit import MemoryRateLimiter
from inferoute.core.errors import ConfigError, Forbidden, TooManyRequests, Unauthorized
from inferoute.tenants import KeyStore, TenantGate, hash_key, presented_key, _main

KEY_A = "sk-team-a-0123456789"
KEY_B = "sk-team-b-9876543210"

YAML = f"""
tenants:
- name: team-a
  key: {KEY_A}
  models: [llama, "qwen-*"]
  requestsPerMinute: 60
  burstRequests: 2
  objective: critical
- name: team-b
  keySha256: {hashlib.sha256(KEY_B.encode()).hexdigest()}
  fairnessId: shared-flow
- name: team-c
  keyEnv: TEAM_C_KEY
"""


def _store() -> KeyStore:
    return KeyStore.from_yaml(YAML, env={"TEAM_C_KEY": "sk-from-env-123"})


def test_keys_are_stored_hashed_only() -> None:
    store = _store()
    assert len(store) == 3
    dump = repr(store._by_digest) + repr(store.tenants())
    for key in (KEY_A, KEY_B, "sk-from-env-123"):
        assert key not in dump
    assert hash_key(KEY_A) in store._by_digest


def test_authenticate_headers() -> None:
    store = _store()
    assert store.authenticate({"authorization": f"Bearer {KEY_A}"}).name == "team-a"
    assert store.authenticate({"x-api-key": KEY_B}).name == "team-b"
    assert store.authenticate({"authorization": "bearer sk-from-env-123"}).name == "team-c"
    with pytest.raises(Unauthorized) as exc:
        store.authenticate({})
    assert exc.value.status == 401 and exc.value.code == "missing_api_key"
    with pytest.raises(Unauthorized) as exc:
        store.authenticate({"authorization": "Bearer sk-wrong-key-123"})
    assert "sk-wrong-key-123" not in str(exc.value.to_dict())
    with pytest.raises(Unauthorized):
        store.authenticate({"authorization": f"Basic {KEY_A}"})
    assert presented_key({"authorization": "Bearer   "}) is None


def test_model_permissions_and_defaults() -> None:
    store = _store()
    a = store.authenticate({"authorization": f"Bearer {KEY_A}"})
    a.check_model("llama")
    a.check_model("qwen-7b")
    with pytest.raises(Forbidden) as exc:
        a.check_model("mistral")
    assert exc.value.status == 403 and KEY_A not in exc.value.message
    b = store.authenticate({"x-api-key": KEY_B})
    b.check_model("anything")
    assert b.fairness_id == "shared-flow" and a.fairness_id == "team-a"
    assert a.objective == "critical" and a.limits.requests_per_minute == 60


async def test_gate_401_403_429_and_settle() -> None:
    lim = MemoryRateLimiter()
    gate = TenantGate(_store(), lim)
    hdr = {"authorization": f"Bearer {KEY_A}"}
    with pytest.raises(Forbidden):
        await gate.admit(hdr, "mistral", 10, 0.0)
    adm = await gate.admit(hdr, "llama", 10, 0.0)
    await gate.admit(hdr, "llama", 10, 0.0)
    with pytest.raises(TooManyRequests) as exc:
        await gate.admit(hdr, "llama", 10, 0.0)
    assert exc.value.status == 429 and "Retry-After" in exc.value.headers
    assert KEY_A not in exc.value.message
    await gate.settle(adm, 99, 0.0)
    assert adm.reservation is not None and adm.reservation.settled
    unlimited = await gate.admit({"x-api-key": KEY_B}, "m", 10, 0.0)
    assert unlimited.reservation is None
    await gate.settle(unlimited, 5, 0.0)
    with pytest.raises(Unauthorized):
        await gate.admit({}, "llama", 1, 0.0)


def test_from_env_forms() -> None:
    assert KeyStore.from_env({}) is None
    simple = KeyStore.from_env({"INFEROUTE_API_KEYS": "sk-one-11111, sk-two-22222"})
    assert simple is not None and len(simple) == 2
    assert simple.authenticate({"x-api-key": "sk-two-22222"}).name == "key-2"
    yaml_env = KeyStore.from_env({"INFEROUTE_API_KEYS":
                                  "{tenants: [{name: x, key: sk-inline-1234}]}"})
    assert yaml_env is not None
    assert yaml_env.authenticate({"x-api-key": "sk-inline-1234"}).name == "x"


@pytest.mark.parametrize("text,needle", [
    ("tenants: [{name: a}]", "exactly one of key"),
    ("tenants: [{name: a, key: sk-aaaaaaaaa, keySha256: " + "a" * 64 + "}]", "exactly one"),
    ("tenants: [{name: a, keySha256: nothex}]", "keySha256"),
    ("tenants: [{name: a, keyEnv: MISSING_VAR}]", "MISSING_VAR is not set"),
    ("tenants: [{name: a, key: sk-aaaaaaaaa}, {name: a, key: sk-bbbbbbbbb}]", "defined twice"),
    ("tenants: [{name: a, key: sk-aaaaaaaaa}, {name: b, key: sk-aaaaaaaaa}]", "share an API key"),
    ("tenants: [{name: a, key: sk-aaaaaaaaa, requestsPerMinute: -1}]", "requestsPerMinute"),
    ("tenants: [{name: a, key: sk-aaaaaaaaa, colour: red}]", "colour"),
    ("- [unclosed", "not valid YAML"),
    ("42", "expected a mapping"),
])
def test_config_errors_are_clear_and_keyless(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        KeyStore.from_yaml(text, env={})
    assert needle in str(exc.value)
    assert "sk-aaaaaaaaa" not in str(exc.value) and "sk-bbbbbbbbb" not in str(exc.value)


def test_from_file(tmp_path) -> None:
    p = tmp_path / "tenants.yaml"
    p.write_text(f"- name: solo\n  key: {KEY_A}\n")
    assert KeyStore.from_file(p).authenticate({"x-api-key": KEY_A}).name == "solo"
    with pytest.raises(ConfigError):
        KeyStore.from_file(tmp_path / "missing.yaml")


def test_nothing_logged_with_key(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    store = _store()
    try:
        store.authenticate({"authorization": "Bearer sk-secret-xyz-000"})
    except Unauthorized:
        pass
    assert "sk-secret-xyz-000" not in caplog.text and KEY_A not in caplog.text


def test_cli_helper(capsys) -> None:
    assert _main(["hash", "abc"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"abc").hexdigest()
    assert _main(["new"]) == 0
    out = capsys.readouterr().out
    key = out.split()[1]
    assert key.startswith("sk-") and hash_key(key) in out
    assert _main([]) == 2
