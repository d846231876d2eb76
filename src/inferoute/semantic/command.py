"""`inferoute semantic eval` (classifier and guard figures) and `inferoute semantic route`
(what the router does with one prompt)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..core.errors import ConfigError

SHORT = {"biology": "bio", "business": "bus", "chemistry": "chem", "computer science": "cs",
         "economics": "econ", "engineering": "eng", "health": "hlth", "history": "hist",
         "law": "law", "math": "math", "other": "oth", "philosophy": "phil", "physics": "phys",
         "psychology": "psy"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("semantic", help="semantic routing: evaluate, try a prompt",
                              description="Semantic routing (model 'auto'), guards and cache.")
    sub = p.add_subparsers(dest="semantic_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    ev = sub.add_parser("eval", help="accuracy, confusion, guard precision/recall, latency")
    ev.add_argument("--config", help="semantic config YAML (default: built-in defaults)")
    ev.add_argument("--categories-set", help="labelled prompts JSONL (default: shipped set)")
    ev.add_argument("--guards-set", help="labelled guard JSONL (default: shipped set)")
    ev.add_argument("--repeats", type=int, default=3,
                    help="timed runs per prompt, best kept (default 3)")
    ev.add_argument("--show-errors", action="store_true", help="list misclassified prompts")
    ev.set_defaults(func=run_eval)

    rt = sub.add_parser("route", help="show the routing decision for one prompt")
    rt.add_argument("prompt")
    rt.add_argument("--config", help="semantic config YAML")
    rt.add_argument("--model", default="auto", help="requested model (default auto)")
    rt.set_defaults(func=run_route)


def _router(config_path: str | None):
    from .config import load_config
    from .router import SemanticRouter

    return SemanticRouter(load_config(config_path))


def run_route(args: argparse.Namespace) -> int:
    from ..core.request import parse_request

    try:
        router = _router(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    body = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}
    req = parse_request("chat", body, {}, request_id="cli")
    t0 = time.perf_counter()
    out = router.route(req, None, now=0.0)
    dt = (time.perf_counter() - t0) * 1e6
    print(f"model:       {out.model}")
    print(f"category:    {out.category or '(below threshold)'}  confidence {out.confidence:.3f}")
    print(f"pii:         {', '.join(out.pii_types) or 'none'}")
    print(f"jailbreak:   score {out.jailbreak_score:.2f}")
    if out.blocked:
        print(f"blocked:     {out.blocked.status} {out.blocked.to_dict()['error']}")
    if out.body_changes:
        print(f"body:        {out.body_changes}")
    print(f"headers:     {out.headers}")
    print(f"route() took {dt:.0f} us")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from .evaluate import (
        default_eval_paths,
        evaluate_categories,
        evaluate_guards,
        read_jsonl,
        route_latencies,
    )

    console = Console()
    if console.width < 130:
        console = Console(width=130)
    try:
        t0 = time.perf_counter()
        router = _router(args.config)
        load_s = time.perf_counter() - t0
        cat_path, guard_path = default_eval_paths()
        cat_rows = read_jsonl(args.categories_set or cat_path)
        guard_rows = read_jsonl(args.guards_set or guard_path)
        rep = evaluate_categories(router, cat_rows, repeats=args.repeats)
        guards = evaluate_guards(router, guard_rows)
        route_lat = route_latencies(router, cat_rows)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    console.print(f"[bold]Semantic router evaluation[/]  embedder {router.embedder.name}, "
                  f"{len(router.categories)} categories, "
                  f"{sum(len(c.examples) for c in router.categories)} examples, "
                  f"loaded in {load_s:.2f} s")
    cc = router.config.classifier
    console.print(f"category accuracy: [bold]{rep.accuracy:.1%}[/] "
                  f"({int(rep.confusion.trace())}/{rep.total}); "
                  f"above threshold {cc.threshold:.2f}: {rep.accepted}/{rep.total} prompts, "
                  f"{rep.accepted_correct / max(1, rep.accepted):.1%} of them correct "
                  f"(the rest go to the default model)")
    if rep.splits:
        parts = ", ".join(f"{name} {ok / max(1, n):.1%} ({ok}/{n})"
                          for name, (ok, n) in sorted(rep.splits.items()))
        console.print(f"by split: {parts}  (blind: written after the examples were final, "
                      f"measured once)")
    console.print(f"classifier latency (embed + classify, best of {args.repeats}): "
                  f"p50 [bold]{rep.percentile_us(50):.0f} us[/], "
                  f"p99 {rep.percentile_us(99):.0f} us, max {rep.percentile_us(100):.0f} us")
    console.print(f"full route() per request (classify + guards + cache lookup): "
                  f"p50 {float(np.percentile(route_lat, 50)) * 1e6:.0f} us, "
                  f"p99 {float(np.percentile(route_lat, 99)) * 1e6:.0f} us")

    short = [SHORT.get(n, n[:4]) for n in rep.names]
    table = Table(title="Confusion (rows: true category, columns: predicted)", show_lines=False)
    table.add_column("true \\ predicted")
    for s in short:
        table.add_column(s, justify="right")
    table.add_column("acc", justify="right")
    for i, name in enumerate(rep.names):
        row = rep.confusion[i]
        cells = []
        for j, v in enumerate(row):
            txt = str(v) if v else "."
            cells.append(f"[green]{txt}[/]" if i == j else (f"[red]{txt}[/]" if v else txt))
        acc = row[i] / max(1, row.sum())
        table.add_row(name, *cells, f"{acc:.0%}")
    console.print(table)

    gt = Table(title=f"Guards ({len(guard_rows)} labelled texts)")
    for col in ("label", "TP", "FP", "FN", "precision", "recall"):
        gt.add_column(col, justify="right" if col != "label" else "left")
    for label in sorted(guards, key=lambda s: (s not in ("pii", "jailbreak"), s)):
        score = guards[label]
        gt.add_row(label, str(score.tp), str(score.fp), str(score.fn), f"{score.precision:.2f}",
                   f"{score.recall:.2f}")
    console.print(gt)
    splits = sorted({str(r["split"]) for r in guard_rows if r.get("split")})
    if splits:
        st = Table(title="Guards by split (tuned: looked at while building the guards; dev: "
                         "used to improve them; blind: measured once, untouched since)")
        for col in ("split", "texts", "pii P", "pii R", "jailbreak P", "jailbreak R"):
            st.add_column(col, justify="right" if col != "split" else "left")
        for name in splits:
            part = evaluate_guards(router, guard_rows, split=name)
            n = sum(1 for r in guard_rows if r.get("split") == name)
            st.add_row(name, str(n), f"{part['pii'].precision:.2f}", f"{part['pii'].recall:.2f}",
                       f"{part['jailbreak'].precision:.2f}", f"{part['jailbreak'].recall:.2f}")
        console.print(st)
    if args.show_errors:
        clf = router.classifier
        for row in cat_rows:
            r = clf.classify(row["prompt"])
            if r.category != row["category"]:
                console.print(f"  {row['category']:>16} -> {r.category:<16} "
                              f"{r.confidence:.2f}  {row['prompt']}", markup=False, emoji=False)
        for label, score in sorted(guards.items()):
            for t in score.missed:
                console.print(f"  missed {label}: {t}", markup=False, emoji=False)
            for t in score.false_alarms:
                console.print(f"  false {label}: {t}", markup=False, emoji=False)
    return 0
