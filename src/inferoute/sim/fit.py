"""Fitting a simulator profile to timings measured on a real engine (pure: numbers in, profile out).

The timing model (sim/timing.py) is linear in six unknowns (seven with prefix hits) once the
model's shape is fixed:

    TTFT(L)      = f + k(L) o + u (2 body L + 2 embed) + w A pairs(L) + s  [+ t L]
    ITL(B, C)    = o + u B (2 body + 2 embed) + m B C kv_bytes + s B

with f the front end's fixed cost (HTTP, tokenizer, queueing of an idle server), o the step
overhead, u seconds per linear FLOP, w seconds per attention FLOP, m seconds per KV byte read,
s seconds per sampled sequence beyond its FLOPs (without it, a CPU engine's decode cost per
sequence, ~3 ms against ~0.4 ms per prefill token, had to come out of u: prefills fitted
25-90% slow and batch-8 decode steps 23-26% fast),
k(L) the prefill chunks of an L-token prompt, pairs(L) its causal query x key pairs, A the
attention FLOPs of one pair, body/embed the non-embedding/embedding parameters. A prefix hit
(C of its L tokens cached) computes only L - C tokens, against the whole context; where the
points include hits, a seventh unknown t prices every prompt token, cached or not (the
front end's tokenizing and hashing, `tokenize_us_per_token`). The fit is a
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .profile import EngineProfile
from .timing import TimingModel

__all__ = ["BusyPoint", "DecodePoint", "FitResult", "PrefillPoint", "architecture_from_hf_config",
           "busy_wait", "check_fit", "fit_frontend_share", "fit_profile"]


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """Median time to first token of a lone prompt of `prompt_tokens`, of which the leading
    `cached` were in the server's prefix cache (0: uncached)."""

    prompt_tokens: int
    ttft: float
    cached: int = 0


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """Median gap between tokens with `batch` sequences decoding at mean `context` tokens."""

    batch: int
    context: float
    itl: float


@dataclass(frozen=True, slots=True)
class BusyPoint:
    """A prefix hit (`prompt_tokens`, the leading `cached` in the cache) sent alone (median TTFT
    `idle`) and while `batch` streams decode at about `context` tokens each (mean TTFT `busy`,
    sent at random moments between their steps)."""

    prompt_tokens: int
    cached: int
    batch: int
    context: int
    idle: float
    busy: float


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


def _prefill_terms(p: EngineProfile, length: int, cached: int = 0) -> tuple[int, float]:
    """(chunks, causal query x key pairs) of prefilling `length` tokens in budget chunks, the
    first `cached` of them already in the cache."""
    budget = p.max_num_batched_tokens
    done, chunks, pairs = cached, 0, 0.0
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
            + x[4] * rows[:, 4] + x[5] * rows[:, 5] + rows[:, 6:] @ x[6:])


def _fit_with_floor(rows: np.ndarray, target: np.ndarray, weights: float) -> np.ndarray:
    """Coefficients [f, o, u, w, m, s] (and t, with a seventh column) minimising relative
    errors, where a step whose weights read (m x weight bytes) outlasts its linear FLOPs costs
    the read instead. The floor binds for
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
    # With prefix hits among the prefill points, a seventh unknown t: seconds per prompt token
    # whether cached or not (the front end's tokenizing, hashing and handing over the prompt).
    # Cold prompts alone cannot tell it from u (both grow with the prompt); a hit pays it on
    # tokens it does not compute. Without t the fit priced a 1,024-token hit 10% fast.
    per_token = any(pt.cached for pt in prefill)
    rows, target = [], []
    for pt in prefill:
        chunks, pairs = _prefill_terms(p, pt.prompt_tokens, pt.cached)
        new = pt.prompt_tokens - pt.cached
        rows.append([1.0, chunks, 2 * body * new + 2 * embed, attn_pair * pairs, 0.0, 1.0]
                    + [float(pt.prompt_tokens)] * per_token)
        target.append(pt.ttft)
    for dp in decode:
        rows.append([0.0, 1.0, dp.batch * (2 * body + 2 * embed), 0.0,
                     dp.batch * dp.context * p.kv_bytes_per_token, float(dp.batch)]
                    + [0.0] * per_token)
        target.append(dp.itl)
    x = _fit_with_floor(np.array(rows), np.array(target), p.weight_bytes)
    f, o, u, w, m, s = (float(v) for v in x[:6])
    t = float(x[6]) if per_token else 0.0
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
                        tokenize_us_per_token=t * 1e6, noise=0.0)
    return FitResult(profile, f, {"frontend_s": f, "step_overhead_s": o,
                                  "s_per_linear_flop": u, "s_per_attention_flop": w,
                                  "s_per_kv_byte": m, "s_per_sequence": s,
                                  "s_per_prompt_token": t})


def busy_wait(profile: EngineProfile, point: BusyPoint) -> float:
    """What the step model alone adds to a hit's TTFT when it arrives beside `point.batch`
    decoding streams: on average half a decode step (the one running when it comes), then its
    prefill shares a step with their decodes instead of having one to itself."""
    t = TimingModel(profile)
    b, n, c = point.batch, point.prompt_tokens, point.cached
    new = n - c
    decode = t.decode_seconds(b, point.context)
    mixed = t.step_seconds(new + b, 1 + b, b * point.context, new * c + new * (new + 1) / 2, n)
    return decode / 2 + mixed - t.prefill_seconds(n, c)


def fit_frontend_share(profile: EngineProfile, points: Sequence[BusyPoint]) -> float:
    """`frontend_engine_share`: the part of a hit's extra wait beside decoding streams that the
    step model does not explain (`busy_wait`), over its front end (`frontend_delay`), in
    [0, 1]; 0 without points."""
    if not points:
        return 0.0
    shares = [(pt.busy - pt.idle - busy_wait(profile, pt))
              / max(profile.frontend_delay(pt.prompt_tokens), 1e-6) for pt in points]
    return min(1.0, max(0.0, sum(shares) / len(shares)))


def check_fit(fit: FitResult, prefill: list[PrefillPoint],
              decode: list[DecodePoint], busy: Sequence[BusyPoint] = ()
              ) -> list[dict[str, Any]]:
    """Every measured point beside what the fitted profile predicts (the full timing model,
    weights-read floor included), with the relative error."""
    t = TimingModel(fit.profile)
    out = []
    for pt in prefill:
        model = (fit.profile.frontend_delay(pt.prompt_tokens)
                 + t.prefill_seconds(pt.prompt_tokens, pt.cached))
        what = (f"TTFT, {pt.prompt_tokens}-token prompt" if not pt.cached else
                f"TTFT, {pt.cached} cached + {pt.prompt_tokens - pt.cached} new tokens")
        out.append({"what": what, "measured": pt.ttft, "model": model,
                    "error": model / pt.ttft - 1})
    for dp in decode:
        model = t.decode_seconds(dp.batch, int(dp.context))
        out.append({"what": f"decode step, batch {dp.batch}, context {dp.context:.0f}",
                    "measured": dp.itl, "model": model, "error": model / dp.itl - 1})
    p = fit.profile
    for bp in busy:
        front = p.frontend_delay(bp.prompt_tokens)
        model = (front + t.prefill_seconds(bp.prompt_tokens, bp.cached) + busy_wait(p, bp)
                 + p.frontend_engine_share * front)
        out.append({"what": f"TTFT, {bp.cached} cached + {bp.prompt_tokens - bp.cached} new "
                            f"beside {bp.batch} decoding", "measured": bp.busy, "model": model,
                    "error": model / bp.busy - 1})
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
