"""The step-time model: how long one vLLM forward step takes on the profile's GPUs.

A step computes `tokens` new tokens for a batch of sequences (prefill chunks and decodes mixed,
as vLLM V1 does) and samples one token for `sampled` of them. Its time is a roofline sum:

    overhead                                          (scheduler, input prep, sampling, launches)
  + sampled x per-sequence overhead                  (host-side sampling and bookkeeping)
  + max(linear FLOPs / (FLOP/s x eff_c), weight bytes / (HBM B/s x eff_m))   (GEMMs: the weights
                                                         are read once per step, shared by all)
  + max(prefill attention FLOPs / (FLOP/s x eff_a), prefill KV bytes / (B/s x eff_m))
  + decode KV bytes read / (HBM B/s x eff_m)           (each decode reads its whole context's KV)
  + tensor-parallel all-reduces (2 per layer: latency + activation bytes / link bandwidth)

FLOP/s and bandwidth are those of all tensor-parallel GPUs together. Derivation and the choice of
each efficiency: docs/simulator-model.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import EngineProfile

__all__ = ["TimingModel", "StepShape"]


@dataclass
class StepShape:
    """What one step computes (built by the engine; handy for calibration and tests)."""

    tokens: int = 0                  # new tokens computed (prefill chunk tokens + decode tokens)
    sampled: int = 0                 # sequences that sample a token this step
    decode_context: int = 0          # sum of context lengths (tokens attended) of decode rows
    prefill_attn_pairs: float = 0.0  # sum over prefill rows of query x key pairs (causal)
    prefill_kv_tokens: int = 0       # sum over prefill rows of tokens whose KV they read


class TimingModel:
    """Turns a step's shape into seconds for one profile (precomputed constants, cheap calls)."""

    def __init__(self, profile: EngineProfile) -> None:
        p = profile
        self.profile = p
        tp = p.tensor_parallel
        flops = p.gpu_tflops * 1e12 * tp
        hbm = p.hbm_tbps * 1e12 * tp
        embed = p.vocab_size * p.hidden_size
        # parameters every token multiplies through (the input embedding is a lookup; the LM
        # head runs only for sampled rows)
        body = p.params_billion * 1e9 - embed * (1 if p.tied_embeddings else 2)
        self.overhead = p.step_overhead_ms / 1e3
        self.sec_per_sequence = p.sequence_overhead_us / 1e6
        self.sec_per_token_linear = 2.0 * body / (flops * p.compute_efficiency)
        self.sec_per_sample = 2.0 * embed / (flops * p.compute_efficiency)
        self.sec_weights = p.weight_bytes / (hbm * p.memory_efficiency)
        # attention FLOPs of one query x key pair over all layers: QK^T and PV, 2 FLOPs per MAC
        attn_flops_pair = 4.0 * p.num_layers * p.num_attention_heads * p.head_dim
        self.sec_per_attn_pair = attn_flops_pair / (flops * p.attention_efficiency)
        self.sec_per_kv_token = p.kv_bytes_per_token / (hbm * p.memory_efficiency)
        if tp > 1:
            n_allreduce = 2 * p.num_layers
            link = p.interconnect_gbps * 1e9 * p.interconnect_efficiency
            ring = 2.0 * (tp - 1) / tp  # bytes each GPU moves per byte of a ring all-reduce
            self.sec_comm_fixed = n_allreduce * p.allreduce_latency_us / 1e6
            self.sec_comm_per_token = n_allreduce * p.hidden_size * p.dtype_bytes * ring / link
        else:
            self.sec_comm_fixed = 0.0
            self.sec_comm_per_token = 0.0

    def step_time(self, shape: StepShape) -> float:
        """Seconds for a step of this shape (0 if it computes nothing)."""
        return self.step_seconds(shape.tokens, shape.sampled, shape.decode_context,
                                 shape.prefill_attn_pairs, shape.prefill_kv_tokens)

    def step_seconds(self, tokens: int, sampled: int, decode_context: int,
                     prefill_attn_pairs: float, prefill_kv_tokens: int) -> float:
        """The hot-path form of `step_time` (plain numbers, no object)."""
        if tokens <= 0:
            return 0.0
        linear = tokens * self.sec_per_token_linear + sampled * self.sec_per_sample
        if linear < self.sec_weights:
            linear = self.sec_weights
        attn_c = prefill_attn_pairs * self.sec_per_attn_pair
        attn_m = prefill_kv_tokens * self.sec_per_kv_token
        return (self.overhead + linear + (attn_c if attn_c > attn_m else attn_m)
                + sampled * self.sec_per_sequence + decode_context * self.sec_per_kv_token
                + self.sec_comm_fixed + tokens * self.sec_comm_per_token)

    # -- closed forms used by the calibration report ----------------------------------------------
    def prefill_seconds(self, prompt_len: int, cached: int = 0) -> float:
        """Time to prefill one prompt alone (uncached part, in budget-sized chunks)."""
        budget = self.profile.max_num_batched_tokens
        done, total = cached, 0.0
        while done < prompt_len:
            n = min(budget, prompt_len - done)
            last = done + n == prompt_len
            total += self.step_seconds(n, 1 if last else 0, 0,
                                       n * done + n * (n + 1) / 2, done + n)
            done += n
        return total

    def decode_seconds(self, batch: int, context: int) -> float:
        """One decode step of `batch` sequences that each attend to `context` tokens."""
        return self.step_seconds(batch, batch, batch * context, 0.0, 0)
