"""`pd-profile-handler`: prefill/decode disaggregation as two scheduling profiles.

Runs the decode profile first; its target is the primary one (it receives the request and
streams the answer). Then, unless the prompt is short or already cached on the decode target,
runs the prefill profile to choose the endpoint that computes the prompt's KV cache; the shell
passes that choice on (e.g. the `x-prefiller-host-port` header of llm-d's sidecar).

Parameters:
- `decodeProfile` ("decode"), `prefillProfile` ("prefill"): profile names; both must exist.
- `threshold` (0): run prefill only when the prompt's uncached tokens on the decode target are at
  least this many. Uncached = estimated prompt tokens - prefix tokens matched by a prefix scorer
  in the decode profile (it consumes their `MATCHED_TOKENS`: a config with a threshold and no
  prefix scorer is refused). 0 always disaggregates.

When the prefill profile finds no endpoint (no prefill-capable endpoint is ready), the request
is served by the decode target alone and the result has no prefill entry.
"""

from __future__ import annotations

from typing import Sequence

import pydantic

from ..errors import ConfigError
from ..request import InferenceRequest
from ..scheduling.framework import CycleContext, ProfileResult, SchedulingResult
from ..scheduling.metric_reads import MetricReads
from ..scheduling.registry import register
from .common import BasePlugin, PluginParams
from .prefix_match import MATCHED_TOKENS, uncached_tokens

__all__ = ["PdProfileHandler"]


@register
class PdProfileHandler(BasePlugin):
    """Decode profile always (primary); prefill profile when enough of the prompt is uncached."""

    type_name = "pd-profile-handler"
    metric_reads = MetricReads()

    class Params(PluginParams):
        decode_profile: str = pydantic.Field("decode", min_length=1)
        prefill_profile: str = pydantic.Field("prefill", min_length=1)
        threshold: int = pydantic.Field(0, ge=0, description="uncached prompt tokens")

    def __init__(self, name: str | None = None, params: PluginParams | None = None) -> None:
        super().__init__(name, params)
        self.consumes = (MATCHED_TOKENS,) if self.params.threshold > 0 else ()

    def check_profiles(self, names: Sequence[str]) -> None:
        """Called by the scheduler at start-up: both profiles must be configured."""
        p = self.params
        if p.decode_profile == p.prefill_profile:
            raise ConfigError(f"{self.name}: decodeProfile and prefillProfile must differ")
        missing = [n for n in (p.decode_profile, p.prefill_profile) if n not in names]
        if missing:
            raise ConfigError(f"{self.name}: scheduling profile(s) {', '.join(map(repr, missing))}"
                              f" not configured; configured: {', '.join(names)}")

    def uncached_tokens(self, ctx: CycleContext, request: InferenceRequest,
                        decode: ProfileResult) -> int:
        return uncached_tokens(ctx, request, decode.targets[0].name)

    def pick_profiles(self, ctx: CycleContext, request: InferenceRequest,
                      profiles: Sequence[str], results: dict[str, ProfileResult]) -> list[str]:
        p = self.params
        decode = results.get(p.decode_profile)
        if decode is None:
            return [p.decode_profile]
        if p.prefill_profile in results or not decode.targets:
            return []
        if p.threshold and self.uncached_tokens(ctx, request, decode) < p.threshold:
            return []
        return [p.prefill_profile]

    def process_results(self, ctx: CycleContext, request: InferenceRequest,
                        results: dict[str, ProfileResult]) -> SchedulingResult:
        p = self.params
        kept = {name: r for name, r in results.items() if r.targets}
        if p.decode_profile not in kept:
            kept[p.decode_profile] = results.get(p.decode_profile) or ProfileResult(
                p.decode_profile, [])
        return SchedulingResult(primary=p.decode_profile, profiles=kept)
