"""API keys and tenants: who is calling, what they may use, how fast.

A tenants file (YAML) lists one entry per key:

    tenants:
    - name: team-a                       # shown in logs and metrics (never the key)
      keySha256: 9f86d081884c7d659a2f...  # sha256 hex of the key (or `key:` in clear, or
                                         # `keyEnv: TEAM_A_KEY` to read it from the environment)
      models: [llama-3-8b, "qwen-*"]     # glob patterns; omitted or ["*"] = every model
      requestsPerMinute: 600
      tokensPerMinute: 200000
      objective: critical                # InferenceObjective name: priority, and its cap
      fairnessId: team-a                 # flow-control fairness id (default: the name)

`INFEROUTE_API_KEYS` may hold the same YAML inline, or just comma-separated keys (each becomes a
tenant `key-N` allowed every model, without limits).

Keys are kept only as SHA-256 digests; a presented key is hashed and looked up, so the clear key
is never stored, logged or put in an error message. Generate and hash keys with
`python -m inferoute.tenants new` / `python -m inferoute.tenants hash KEY`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pydantic
import yaml

from .core.admission.ratelimit import Limits, RateLimiter, Reservation
from .core.errors import ConfigError, Forbidden, Unauthorized, explain_validation

ENV_VAR = "INFEROUTE_API_KEYS"


def hash_key(key: str) -> str:
    """The stored form of an API key: SHA-256 hex digest."""
    # surrogateescape: a header that was not UTF-8 reaches here with its bytes escaped; it
    # hashes to a digest no configured key has (401), not to a UnicodeEncodeError (500)
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class TenantSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    name: str = pydantic.Field(min_length=1, max_length=128)
    key: str | None = pydantic.Field(None, min_length=8, repr=False)
    key_sha256: str | None = pydantic.Field(None, alias="keySha256",
                                            pattern=r"^[0-9a-fA-F]{64}$")
    key_env: str | None = pydantic.Field(None, alias="keyEnv")
    models: list[str] = pydantic.Field(default_factory=lambda: ["*"])
    requests_per_minute: float | None = pydantic.Field(None, alias="requestsPerMinute", gt=0)
    tokens_per_minute: float | None = pydantic.Field(None, alias="tokensPerMinute", gt=0)
    burst_requests: float | None = pydantic.Field(None, alias="burstRequests", gt=0)
    burst_tokens: float | None = pydantic.Field(None, alias="burstTokens", gt=0)
    objective: str | None = None
    fairness_id: str | None = pydantic.Field(None, alias="fairnessId", max_length=128)

    @pydantic.model_validator(mode="after")
    def _one_key(self) -> "TenantSpec":
        given = [k for k in (self.key, self.key_sha256, self.key_env) if k]
        if len(given) != 1:
            raise ValueError(f"tenant {self.name!r}: give exactly one of key, keySha256, keyEnv")
        return self


class TenantsFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    tenants: list[TenantSpec] = pydantic.Field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Tenant:
    """An authenticated caller. Holds no key material."""

    name: str
    models: tuple[str, ...] = ("*",)
    limits: Limits = Limits()
    objective: str | None = None
    fairness_id: str = ""

    def allows(self, model: str) -> bool:
        return any(p == "*" or p == model or fnmatch.fnmatchcase(model, p)
                   for p in self.models)

    def check_model(self, model: str) -> None:
        """Forbidden (403) when this tenant may not use `model`."""
        if not self.allows(model):
            raise Forbidden(f"the API key of '{self.name}' is not allowed to use model "
                            f"'{model}'", code="model_not_allowed", param="model")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer ...` or `x-api-key` (lower-case header names)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class KeyStore:
    """SHA-256 digest -> Tenant."""

    def __init__(self, tenants: Mapping[str, Tenant] | None = None) -> None:
        self._by_digest: dict[str, Tenant] = dict(tenants or {})

    def __len__(self) -> int:
        return len(self._by_digest)

    def tenants(self) -> list[Tenant]:
        return list(self._by_digest.values())

    def add(self, key_digest: str, tenant: Tenant) -> None:
        digest = key_digest.lower()
        if digest in self._by_digest:
            raise ConfigError(f"tenants {self._by_digest[digest].name!r} and {tenant.name!r} "
                              "share an API key")
        self._by_digest[digest] = tenant

    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        """The tenant of the request's key; Unauthorized (401) when missing or unknown."""
        key = presented_key(headers)
        if key is None:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'",
                               code="missing_api_key")
        tenant = self._by_digest.get(hash_key(key))
        if tenant is None:
            raise Unauthorized("Incorrect API key provided")
        return tenant

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_specs(cls, specs: list[TenantSpec], env: Mapping[str, str] | None = None,
                   source: str = "<tenants>") -> "KeyStore":
        env = os.environ if env is None else env
        store = cls()
        names: set[str] = set()
        for s in specs:
            if s.name in names:
                raise ConfigError(f"{source}: tenant {s.name!r} is defined twice")
            names.add(s.name)
            if s.key_sha256:
                digest = s.key_sha256
            elif s.key_env:
                value = env.get(s.key_env)
                if not value:
                    raise ConfigError(f"{source}: tenant {s.name!r}: environment variable "
                                      f"{s.key_env} is not set")
                digest = hash_key(value)
            else:
                digest = hash_key(s.key or "")
            limits = Limits(s.requests_per_minute, s.tokens_per_minute, s.burst_requests,
                            s.burst_tokens)
            store.add(digest, Tenant(s.name, tuple(s.models), limits, s.objective,
                                     s.fairness_id or s.name))
        return store

    @classmethod
    def from_yaml(cls, text: str, source: str = "<tenants>",
                  env: Mapping[str, str] | None = None) -> "KeyStore":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            # the YAML may hold clear keys: report the position only, not the text
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source} is not valid YAML{where}") from None
        if isinstance(data, list):
            data = {"tenants": data}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with a 'tenants' list")
        try:
            parsed = TenantsFile.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ConfigError(explain_validation(exc, "tenants", source)) from None
        return cls.from_specs(parsed.tenants, env, source)

    @classmethod
    def from_file(cls, path: str | Path, env: Mapping[str, str] | None = None) -> "KeyStore":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read tenants file {p}: {exc.strerror}") from None
        return cls.from_yaml(text, str(p), env)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KeyStore | None":
        """From `INFEROUTE_API_KEYS` (YAML, or comma-separated keys); None when unset."""
        env = os.environ if env is None else env
        text = (env.get(ENV_VAR) or "").strip()
        if not text:
            return None
        if ":" in text or "\n" in text or text.startswith(("[", "{")):
            return cls.from_yaml(text, ENV_VAR, env)
        store = cls()
        for i, key in enumerate(k.strip() for k in text.split(",") if k.strip()):
            store.add(hash_key(key), Tenant(f"key-{i + 1}", fairness_id=f"key-{i + 1}"))
        return store


@dataclass(slots=True)
class TenantAdmission:
    """An authenticated, rate-limited request: settle it with `TenantGate.settle`."""

    tenant: Tenant
    reservation: Reservation | None


class TenantGate:
    """Authentication, model permission and rate limits in one call for the gateway.

        adm = await gate.admit(headers, model, estimated_tokens, now)   # 401 / 403 / 429
        ...                                                             # serve
        await gate.settle(adm, actual_tokens, now)                      # tokens/min by usage
    """

    def __init__(self, store: KeyStore, limiter: RateLimiter) -> None:
        self.store = store
        self.limiter = limiter

    async def admit(self, headers: Mapping[str, str], model: str, estimated_tokens: int,
                    now: float) -> TenantAdmission:
        tenant = self.store.authenticate(headers)
        tenant.check_model(model)
        if tenant.limits.unlimited:
            return TenantAdmission(tenant, None)
        res = await self.limiter.reserve(tenant.name, tenant.limits, estimated_tokens, now)
        return TenantAdmission(tenant, res)

    async def settle(self, admission: TenantAdmission, actual_tokens: int | None,
                     now: float) -> None:
        """Charge actual usage; with no usage known the estimate stands."""
        res = admission.reservation
        if res is None or res.settled:
            return
        if actual_tokens is None:
            res.settled = True
            return
        await self.limiter.reconcile(res, actual_tokens, now)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["new"]:
        key = "sk-" + secrets.token_urlsafe(32)
        print(f"key:       {key}\nkeySha256: {hash_key(key)}")
        return 0
    if argv[:1] == ["hash"] and len(argv) == 2:
        print(hash_key(argv[1]))
        return 0
    print("usage: python -m inferoute.tenants new | hash KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


__all__ = ["KeyStore", "Tenant", "TenantAdmission", "TenantGate", "TenantSpec", "hash_key",
           "presented_key", "ENV_VAR"]
