"""The `inferoute` command: each subcommand lives with the shell it drives.

A subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func=callable(args) -> int` as the parser default. Modules are imported lazily by name so
that `inferoute --help` stays fast and a missing optional piece does not break the rest.
"""

from __future__ import annotations

import argparse
import difflib
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
    _mark_parsers(parser)
    return parser


def _mark_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's parser itself as the default `_cli_parser`: the innermost one
    parsed wins, so `main` knows which command's usage to print for a bad flag."""
    parser.set_defaults(_cli_parser=parser)
    for action in parser._actions:  # argparse keeps subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _mark_parsers(sub)


def _unknown_arguments(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """'unrecognized arguments: ...' plus the closest flag of `parser` for each misspelt one."""
    flags = [s for a in parser._actions for s in a.option_strings]
    hints = []
    for arg in extra:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{arg.split('=', 1)[0]}: did you mean {close[0]}?")
    return "unrecognized arguments: " + " ".join(extra) + "".join(f"\n  {h}" for h in hints)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command_parser = args._cli_parser
    del args._cli_parser  # commands see only their own options (some write them to reports)
    if extra:  # the command's own usage and the closest flag, not the top-level usage
        command_parser.error(_unknown_arguments(command_parser, extra))
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
