"""The package's import graph: no cycles, and every area imports only the areas below it.

Walks the source with `ast` (every import, including those inside functions, which still tie
modules together), so it needs no imports of its own and runs in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import inferoute

SRC = Path(inferoute.__file__).parent

#: what each area may import besides itself: the sans-I/O core at the bottom, the data layer
#: and shared helpers above it, then the shells (gateway, extproc, bench, sim), which never
#: import each other (bench drives the simulator's sans-I/O engine, as the design says), and the
#: tools and the CLI at the top
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "aiotasks": set(),
    "procs": set(),
    "configfiles": {"core"},
    "semantic": {"core", "configfiles"},
    "tenants": {"core"},
    "datalayer": {"core", "aiotasks", "configfiles"},
    "observability": {"core", "datalayer"},
    "sim": {"core", "aiotasks", "procs"},
    "gateway": {"core", "datalayer", "aiotasks", "configfiles", "observability", "semantic",
                "tenants"},
    "extproc": {"core", "datalayer", "aiotasks", "configfiles", "observability"},
    "bench": {"core", "sim", "procs", "configfiles"},
    "tools": {"core", "datalayer", "aiotasks", "configfiles", "observability", "procs",
              "gateway", "extproc", "bench", "sim"},
    "cli": {"*"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _module(path: Path) -> str:
    parts = ["inferoute", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in SRC.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the inferoute modules it imports (a `from pkg import sub` names `pkg.sub`)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                targets.update([s for s in subs if s in modules] or [target])
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_area_imports_only_the_areas_below_it() -> None:
    wrong = sorted(f"{m} -> {t}" for m, ts in import_graph().items() for t in ts
                   if _area(t) != _area(m) and "*" not in ALLOWED[_area(m)]
                   and _area(t) not in ALLOWED[_area(m)])
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_every_area_is_known() -> None:
    assert {_area(m) for m in import_graph()} <= set(ALLOWED)


def test_no_import_cycles() -> None:
    graph = import_graph()
    # a package's __init__ importing its own modules (the plugins package) is not a cycle
    edges = {m: {t for t in ts if not (m and t.startswith(m + "."))} for m, ts in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
