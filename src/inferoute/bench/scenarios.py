"""Named benchmark scenarios: a workload with its parameters, load and fleet.

The four workload presets run on 8 replicas of the profile `bench matrix` is given; the
`kv-overflow-*` scenarios fix their own fleet, chosen so that the prompt families need more KV
than the fleet has (the overflow factor: distinct prefix tokens / the fleet's KV tokens), on
different fleet sizes and model profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .load import LoadSpec, parse_stages
from .workloads import (
    DEFAULT_LOAD,
    DEFAULT_PARAMS,
    DEFAULT_STAGES,
    Workload,
    make_workload,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A workload preset and, when it needs one, its own fleet."""

    workload: str
    params: dict[str, Any]
    stages: str
    load: tuple[str, float] = ("poisson", 1.0)
    replicas: int | None = None
    profile: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    about: str = ""

    def build(self, seed: int) -> tuple[Workload, LoadSpec]:
        wl = make_workload(self.workload, self.params, seed=seed)
        kind, burst = self.load
        load = LoadSpec(parse_stages(self.stages), kind=kind,  # type: ignore[arg-type]
                        burstiness=burst, seed=seed)
        return wl, load


SCENARIOS: dict[str, Scenario] = {
    w: Scenario(w, DEFAULT_PARAMS[w], DEFAULT_STAGES[w], DEFAULT_LOAD[w])
    for w in ("shared_prefix", "multi_turn_chat", "random", "mixed")
}
SCENARIOS.update({
    # 225 families x 6,000 prefix tokens = 84k blocks over 4 x 21,090: overflow 1.0 for the
    # prefixes alone, about 2 with the requests running (the shape at half the fleet)
    "kv-overflow-4x32b": Scenario(
        "shared_prefix", {"num_groups": 225}, "10:20,20:20,30:20",
        replicas=4, profile="qwen3-32b-2xh100",
        about="4 x Qwen3-32B, 225 families of 6,000 + 1,200 tokens, 1,000 out"),
    # 128 families x 4,000 tokens = 32k blocks over 4 x 4,000: overflow 2, prefill-heavy
    "kv-overflow-4x8b": Scenario(
        "shared_prefix", {"num_groups": 128, "system_prompt_len": 4000, "question_len": 200,
                              "output_len": 200}, "10:30,20:30,40:30",
        replicas=4, profile="llama3-8b-h100", engine={"num_blocks": 4000},
        about="4 x Llama-3-8B with 4,000 KV blocks, 128 families of 4,000 + 200 tokens, 200 out"),
    # 384 families x 2,000 tokens = 48k blocks over 16 x 2,000: overflow 1.5, many small replicas
    "kv-overflow-16x8b": Scenario(
        "shared_prefix", {"num_groups": 384, "num_prompts_per_group": 8, "system_prompt_len": 2000,
                              "question_len": 100, "output_len": 100}, "100:15,200:15,300:15",
        replicas=16, profile="llama3-8b-h100", engine={"num_blocks": 2000},
        about="16 x Llama-3-8B with 2,000 KV blocks, 384 families of 2,000 + 100 tokens, 100 out"),
})


def scenario(name: str) -> Scenario:
    """The scenario called `name`; an unknown name raises ValueError listing the known ones."""
    sc = SCENARIOS.get(name)
    if sc is None:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return sc
