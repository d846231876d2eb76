"""The unlimited-KV ceiling: the same load on the same fleet with a KV cache that never runs out.

Routing can win back what a finite KV cache costs (recomputed prefixes, preemption, smaller
batches) and nothing more, so every report can say how far a policy is from that ceiling. The
ceiling run gives each replica room for every prompt and output of the workload's list at once
(plus the profile's own capacity for what is running), so nothing worth keeping is ever evicted;
the engines' eviction counts in the ceiling report show it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .des import SimConfig
from .workloads import Workload

#: a replica's KV blocks in a ceiling run never exceed this (memory: ~150 bytes a block)
MAX_CEILING_BLOCKS = 2_000_000


def unlimited_blocks(workload: Workload, block_size: int, profile_blocks: int) -> int:
    """KV blocks a replica needs to keep every request of `workload` cached at once."""
    tokens = sum(item.prompt_tokens + item.max_tokens for item in workload.items)
    need = -(-tokens // block_size) + len(workload.items) + profile_blocks
    return min(MAX_CEILING_BLOCKS, need)


def ceiling_config(cfg: SimConfig) -> SimConfig:
    """`cfg` with an unlimited KV cache (every other profile override kept)."""
    from ..sim.profile import load_profile

    profile = load_profile(cfg.profile, **cfg.profile_overrides)
    blocks = unlimited_blocks(cfg.workload, profile.block_size, int(profile.num_blocks or 0))
    return replace(cfg, profile_overrides={**cfg.profile_overrides, "num_blocks": blocks})


def saturation(report: dict[str, Any]) -> float:
    """The best output tokens/s over the report's stages."""
    return max(s["metrics"]["throughput"]["output_tokens_per_sec"] for s in report["stages"])


def attach_ceiling(report: dict[str, Any], ceiling: dict[str, Any]) -> None:
    """Record the ceiling run in `report`: its throughput per stage, its saturation and this
    run's saturation as % of it (`report["ceiling"]`)."""
    best = saturation(ceiling)
    report["ceiling"] = {
        "num_blocks": ceiling["config"].get("profile_overrides", {}).get("num_blocks"),
        "evictions": sum(e.get("evictions", 0) for e in ceiling.get("engines", [])),
        "output_tokens_per_sec": best,
        "stages_output_tokens_per_sec": [s["metrics"]["throughput"]["output_tokens_per_sec"]
                                         for s in ceiling["stages"]],
        "pct_of_ceiling": saturation(report) / best * 100 if best else None,
    }
