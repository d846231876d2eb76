"""API keys and per-tenant rate limits for `inferoute serve` (the core rules: docs/admission.md).

On when the serving config names a tenants file (`tenants: FILE` or `--tenants FILE`) or when
`INFEROUTE_API_KEYS` is set; off otherwise (no authentication). Limits are kept in memory, or in
Redis when `redis: URL` (`--redis URL`) is given, so several gateway replicas share them. Each
request is admitted (401 / 403 / 429) before anything else and settled with its actual token
usage when it ends.
"""

from __future__ import annotations

from typing import Any

from ..core.admission import MemoryRateLimiter, estimate_tokens, total_tokens
from ..core.admission.ratelimit import sequences_requested
from ..core.request import InferenceRequest
from ..tenants import TenantAdmission
from ..tenants import KeyStore, TenantGate


class Tenants:
    """The gate plus the limiter's lifecycle."""

    def __init__(self, store: KeyStore, redis_url: str | None = None) -> None:
        self.limiter: Any
        if redis_url:
            from ..datalayer.redis_limits import RedisRateLimiter
            self.limiter = RedisRateLimiter.from_url(redis_url)
        else:
            self.limiter = MemoryRateLimiter()
        self.gate = TenantGate(store, self.limiter)

    @classmethod
    def from_config(cls, tenants_file: str | None, redis_url: str | None) -> "Tenants | None":
        store = KeyStore.from_file(tenants_file) if tenants_file else KeyStore.from_env()
        return cls(store, redis_url) if store is not None else None

    async def admit(self, request: InferenceRequest, now: float,
                    context_length: int | None = None) -> TenantAdmission:
        """Authenticate, check the model, reserve rate (raises 401 / 403 / 429); the token
        pre-charge covers every sequence asked for (`n`, `best_of`), each capped at
        `context_length` (the model's, when known)."""
        adm = await self.gate.admit(
            request.headers, request.model,
            estimate_tokens(request.prompt_tokens_estimate, request.max_tokens,
                            context_length, sequences_requested(request.body)), now)
        request.tenant = adm.tenant.name
        return adm

    async def settle(self, adm: TenantAdmission, usage: dict[str, Any] | None,
                     now: float, *, rejected: bool = False) -> None:
        """Charge the actual usage; a request nobody served (`rejected`: an error status or
        no answer at all) costs no tokens, whatever its pre-charge was."""
        used = total_tokens(usage)
        await self.gate.settle(adm, 0 if used is None and rejected else used, now)

    async def close(self) -> None:
        close = getattr(self.limiter, "close", None)
        if close is not None:
            await close()
