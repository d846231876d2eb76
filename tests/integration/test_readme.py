"""The README's snippets, as a new user would run them.

- The quick start's shell block (a simulated fleet and `inferoute serve`) and its Python block
  (the `openai` SDK, streaming) run for real; the only change is the port numbers, all moved by
  one offset to a free range so the test cannot collide with anything else on the machine.
- Every `inferoute ...` command line in a shell block parses (no unknown flag, no missing value),
  every `python -m` module and `python FILE` script it names exists.
- Every YAML block validates: scheduler configs as EndpointPickerConfig, the rest as (parts of)
  the serving config.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferoute.cli import build_parser
from inferoute.core.scheduling.config import parse_config
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.procs import ChildProcess, free_port_range

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of `lang`, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """Shell command lines of a block: continuations joined, comments dropped, split at `&&`,
    a trailing `&` removed."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in [*argv, "&&"]:
            if tok in ("&&", "&"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(tok)
    return out


ALL_COMMANDS = [argv for b in blocks("sh") for argv in commands(b)]


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert any(argv[:2] == ["inferoute", "sim"] for argv in ALL_COMMANDS)
    assert any("OpenAI(" in b for b in blocks("python"))
    assert len(blocks("yaml")) >= 3


@pytest.mark.parametrize("argv", [a for a in ALL_COMMANDS if a[0] == "inferoute"],
                         ids=lambda a: " ".join(a)[:60])
def test_every_inferoute_command_parses(argv: list[str]) -> None:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv[1:])
    except SystemExit as exc:  # argparse reported an error (printed above)
        pytest.fail(f"`{' '.join(argv)}` does not parse (exit {exc.code})")
    assert extra == [], f"`{' '.join(argv)}`: unknown arguments {extra}"
    assert getattr(args, "func", None) is not None, f"`{' '.join(argv)}` names no command"


@pytest.mark.parametrize("argv", [a for a in ALL_COMMANDS if a[0] in ("python", "python3")],
                         ids=lambda a: " ".join(a)[:60])
def test_every_python_command_names_something_that_exists(argv: list[str]) -> None:
    if argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, argv
    else:
        assert (ROOT / argv[1]).is_file(), argv


def _serving_fragment(doc: dict[str, Any]) -> dict[str, Any]:
    """A README serving-config fragment, completed with a pool when it shows none."""
    pools = doc.get("pools") or [{"model": "m", "endpoints": ["http://127.0.0.1:1"]}]
    return {**doc, "pools": pools}


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_every_yaml_block_validates(index: int) -> None:
    doc = yaml.safe_load(blocks("yaml")[index])
    assert isinstance(doc, dict)
    if "schedulingProfiles" in doc:
        parse_config(doc, f"README yaml block {index}")
    else:
        cfg = parse_serving_config(_serving_fragment(doc), f"README yaml block {index}")
        if "admission" in doc:
            assert cfg.admission_config() is not None


def _move_ports(text: str, offset: int) -> str:
    return re.sub(r"(--port |127\.0\.0\.1:|localhost:)(\d{4,5})",
                  lambda m: f"{m[1]}{int(m[2]) + offset}", text)


def test_quick_start_runs_as_written() -> None:
    shell = next(b for b in blocks("sh") if "inferoute sim --model m" in b)
    python = next(b for b in blocks("python") if "OpenAI(" in b)
    ports = [int(p) for p in re.findall(r"(?:--port |127\.0\.0\.1:|localhost:)(\d{4,5})",
                                        shell + python)]
    offset = free_port_range(max(ports) - min(ports) + 1) - min(ports)
    procs: list[ChildProcess] = []
    try:
        for argv in commands(_move_ports(shell, offset)):
            assert argv[0] == "inferoute", argv
            procs.append(ChildProcess([sys.executable, "-m", "inferoute", *argv[1:]],
                                      name=" ".join(argv[:2])))
        sim, gateway = procs
        sim.wait_for_line("serving")
        port = int(re.search(r"--port (\d+)", " ".join(commands(_move_ports(shell, offset))[1]))[1])
        gateway.wait_for_http(f"http://127.0.0.1:{port}/ready", timeout=60)
        run = subprocess.run([sys.executable, "-c", _move_ports(python, offset)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip(), "the snippet printed no reply"
    finally:
        for p in reversed(procs):
            p.stop(timeout=15)
