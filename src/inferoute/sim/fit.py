"""Fitting a simulator profile to timings measured on a real engine (pure: numbers in, profile out).

The timing model (sim/timing.py) is linear in six unknowns once the model's shape is fixed:

    TTFT(L)      = f + k(L) o + u (2 body L + 2 embed) + w A pairs(L) + s
    ITL(B, C)    = o + u B (2 body + 2 embed) + m B C kv_bytes + s B

with f the front end's fixed cost (HTTP, tokenizer, queueing of an idle server), o the step
overhead, u seconds per linear FLOP, w seconds per attention FLOP, m seconds per KV byte read,
s seconds per sampled sequence beyond its FLOPs (without it, a CPU engine's decode cost per
sequence, ~3 ms against ~0.4 ms per prefill token, had to come out of u: prefills fitted
25-90% slow and batch-8 decode steps 23-26% fast),
k(L) the prefill chunks of an L-token prompt, pairs(L) its causal query x key pairs, A the
attention FLOPs of one pair, body/embed the non-embedding/embedding parameters. The fit is a
non-negative least squares on *relative* errors (each row divided by its measurement), so a
1 s prefill does not drown a 5 ms decode step. The profile then gets `gpu_tflops` the faster
of 1/u and 1/w, each efficiency its own rate over that (so the slower of the two gets an
efficiency below 1: attention on a GPU, the GEMMs of the tiny model on a CPU, where clamping
attention to the GEMMs' rate priced a 3,072-token prefill 63-69% too slow), memory
efficiency 1 and `hbm_tbps = 1/m`:
effective figures of the measured machine, not its datasheet. A step whose weights read
(m x weight bytes) outlasts its linear FLOPs costs the read instead, as in the timing model;
`check_fit` shows what the profile predicts for every measured point and its error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .profile import EngineProfile
from .timing import TimingModel

__all__ = ["PrefillPoint", "DecodePoint", "FitResult", "fit_profile", "check_fit",
           "architecture_from_hf_config"]


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """Median time to first token of a lone, uncached prompt of `prompt_tokens`."""

    prompt_tokens: int
    ttft: float


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """Median gap between tokens with `batch` sequences decoding at mean `context` tokens."""

    batch: int
    context: float
    itl: float


@dataclass(frozen=True, slots=True)
class FitResult:
    profile: EngineProfile
    frontend_seconds: float
    coefficients: dict[str, float]


def _shape(p: EngineProfile) -> tuple[float, float, float]:
    embed = float(p.vocab_size * p.hidden_size)
    body = p.params_billion * 1e9 - embed * (1 if p.tied_embeddings else 2)
    attn_pair = 4.0 * p.num_layers * p.num_attention_heads * p.head_dim
    return body, embed, attn_pair


def _prefill_terms(p: EngineProfile, length: int) -> tuple[int, float]:
    """(chunks, causal query x key pairs) of prefilling `length` tokens in budget chunks."""
    budget = p.max_num_batched_tokens
    done, chunks, pairs = 0, 0, 0.0
    while done < length:
        n = min(budget, length - done)
        pairs += n * done + n * (n + 1) / 2
        done += n
        chunks += 1
    return chunks, pairs


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 by elimination: drop the most negative unknown, refit."""
    active = list(range(a.shape[1]))
    x = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sol >= 0).all():
            x[active] = sol
            return x
        active.pop(int(np.argmin(sol)))
    return x


def _predict(x: np.ndarray, rows: np.ndarray, weights: float) -> np.ndarray:
    """The timing model on fit rows: the linear FLOPs of each step floored by a weights read."""
    steps = np.maximum(rows[:, 1], 1.0)
    linear = np.maximum(x[2] * rows[:, 2] / steps, x[4] * weights) * steps
    return (x[0] * rows[:, 0] + x[1] * rows[:, 1] + linear + x[3] * rows[:, 3]
            + x[4] * rows[:, 4] + x[5] * rows[:, 5])


def _fit_with_floor(rows: np.ndarray, target: np.ndarray, weights: float) -> np.ndarray:
    """Coefficients [f, o, u, w, m, s] minimising relative errors, where a step whose weights read
    (m x weight bytes) outlasts its linear FLOPs costs the read instead. The floor binds for
    the points with the fewest FLOPs per step, so every cut of the points sorted by FLOPs per
    step is tried; the best fit under the floored model wins."""
    steps = np.maximum(rows[:, 1], 1.0)
    per_step = rows[:, 2] / steps
    best, best_err = np.zeros(rows.shape[1]), np.inf
    for cut in [0.0, *sorted(set(per_step.tolist()))]:
        floor = per_step <= cut
        a = rows.copy()
        a[floor, 4] += weights * steps[floor]
        a[floor, 2] = 0.0
        scale = a.max(axis=0)
        scale[scale == 0] = 1.0
        x = _nnls(a / target[:, None] / scale, np.ones(len(target))) / scale
        err = float(np.sum((_predict(x, rows, weights) / target - 1) ** 2))
        if err < best_err:
            best, best_err = x, err
    return best


def fit_profile(base: EngineProfile, prefill: list[PrefillPoint], decode: list[DecodePoint],
                **fields: Any) -> FitResult:
    """A copy of `base` (the model's shape) whose timing constants reproduce the measurements;
    `fields` (block_size, num_blocks, max_model_len, ...) are set as given."""
    p = base.replace(**fields) if fields else base
    if not prefill or not decode:
        raise ValueError("the fit needs prefill and decode measurements")
    body, embed, attn_pair = _shape(p)
    # per point: [f, o, linear FLOPs, attention FLOPs, KV bytes, sampled sequences], and whether
    # the step's weights read (m x weight bytes) outweighs its linear FLOPs (then that term
    # replaces them)
    rows, target = [], []
    for pt in prefill:
        chunks, pairs = _prefill_terms(p, pt.prompt_tokens)
        rows.append([1.0, chunks, 2 * body * pt.prompt_tokens + 2 * embed, attn_pair * pairs,
                     0.0, 1.0])
        target.append(pt.ttft)
    for dp in decode:
        rows.append([0.0, 1.0, dp.batch * (2 * body + 2 * embed), 0.0,
                     dp.batch * dp.context * p.kv_bytes_per_token, float(dp.batch)])
        target.append(dp.itl)
    x = _fit_with_floor(np.array(rows), np.array(target), p.weight_bytes)
    f, o, u, w, m, s = (float(v) for v in x)
    if u > 0 and w > 0:
        # the faster of the two rates is the "peak", the other its efficiency (<= 1): on a GPU
        # the GEMMs are faster per FLOP, on a CPU with a narrow model often attention is
        peak = max(1.0 / u, 1.0 / w)
        tflops, compute_eff, attn_eff = peak / 1e12, 1.0 / u / peak, 1.0 / w / peak
    else:
        # a zero fit: that cost does not show at these lengths (it hides in the others)
        tflops, compute_eff, attn_eff = (1.0 / u / 1e12 if u > 0 else 1e6), 1.0, 1.0
    hbm = 1.0 / m / 1e12 if m > 0 else 1e3
    profile = p.replace(tensor_parallel=1, gpu_tflops=tflops, compute_efficiency=compute_eff,
                        attention_efficiency=attn_eff, hbm_tbps=hbm, memory_efficiency=1.0,
                        step_overhead_ms=o * 1e3, sequence_overhead_us=s * 1e6,
                        frontend_fixed_ms=f * 1e3,
                        tokenize_us_per_token=0.0, noise=0.0)
    return FitResult(profile, f, {"frontend_s": f, "step_overhead_s": o,
                                  "s_per_linear_flop": u, "s_per_attention_flop": w,
                                  "s_per_kv_byte": m, "s_per_sequence": s})


def check_fit(fit: FitResult, prefill: list[PrefillPoint],
              decode: list[DecodePoint]) -> list[dict[str, Any]]:
    """Every measured point beside what the fitted profile predicts (the full timing model,
    weights-read floor included), with the relative error."""
    t = TimingModel(fit.profile)
    out = []
    for pt in prefill:
        model = fit.frontend_seconds + t.prefill_seconds(pt.prompt_tokens)
        out.append({"what": f"TTFT, {pt.prompt_tokens}-token prompt", "measured": pt.ttft,
                    "model": model, "error": model / pt.ttft - 1})
    for dp in decode:
        model = t.decode_seconds(dp.batch, int(dp.context))
        out.append({"what": f"decode step, batch {dp.batch}, context {dp.context:.0f}",
                    "measured": dp.itl, "model": model, "error": model / dp.itl - 1})
    return out


def architecture_from_hf_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Profile fields from a Hugging Face `config.json` of a Llama-like decoder (parameter
    count from the shapes: embeddings, attention, gated MLP, norms)."""
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    vocab = int(cfg["vocab_size"])
    tied = bool(cfg.get("tie_word_embeddings", False))
    attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "num_kv_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
            "tied_embeddings": tied, "params_billion": params / 1e9,
            "dtype_bytes": 4 if "32" in dtype else 2, "kv_dtype_bytes": 2,
            "max_model_len": int(cfg.get("max_position_embeddings") or 4096)}
