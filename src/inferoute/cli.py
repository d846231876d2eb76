"""The `inferoute` command: each subcommand lives with the shell it drives.

A subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func=callable(args) -> int` as the parser default. Modules are imported lazily by name so
that `inferoute --help` stays fast and a missing optional piece does not break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: (module, subcommand names it registers) in help order
COMMAND_MODULES = (
    "inferoute.gateway.command",   # serve
    "inferoute.tools.overhead",    # overhead
    "inferoute.sim.command",       # sim, sim calibrate
    "inferoute.bench.command",     # bench run|sim|compare, demo
    "inferoute.extproc.command",   # epp
    "inferoute.semantic.command",  # semantic eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferoute",
        description="An intelligent inference gateway for self-hosted LLMs.")
    parser.add_argument("--version", action="version", version=f"inferoute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
