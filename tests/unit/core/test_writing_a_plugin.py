"""docs/scheduling.md's "Writing a plugin" is true: its module, dropped into the plugins package,
registers its type and scores in a config with no other change; a broken module fails loudly."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

import inferoute.core.plugins as plugins_pkg
from inferoute.core.scheduling import registry
from inferoute.core.scheduling.config import load_config_text
from inferoute.core.scheduling.scheduler import Scheduler

DOC = Path(__file__).resolve().parents[3] / "docs" / "scheduling.md"
PACKAGE_INIT = Path(plugins_pkg.__file__).read_text()


def _example() -> str:
    section = DOC.read_text().split("## Writing a plugin", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def _import_package_with(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the plugins package's __init__ as importing it would, with `folder` in the package."""
    monkeypatch.setattr(plugins_pkg, "__path__", [*plugins_pkg.__path__, str(folder)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for name in [m for m in sys.modules if m.startswith("inferoute.core.plugins.")]:
        monkeypatch.setitem(sys.modules, name, sys.modules[name])  # restored afterwards
    exec(compile(PACKAGE_INIT, plugins_pkg.__file__, "exec"), vars(plugins_pkg))


def test_the_documented_module_is_all_a_new_plugin_needs(tmp_path, monkeypatch, make_ep,
                                                         make_req) -> None:
    (tmp_path / "running_lora_scorer.py").write_text(_example())
    _import_package_with(tmp_path, monkeypatch)
    monkeypatch.delitem(sys.modules, "inferoute.core.plugins.running_lora_scorer")
    sched = Scheduler(load_config_text("""
plugins: [{type: running-lora-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: running-lora-scorer}]}]
"""), seed=0)
    busy, idle = make_ep(0, running_loras=("a", "b")), make_ep(1)
    assert sched.schedule(make_req(), [busy, idle], 0.0).target is idle


def test_a_broken_plugin_module_fails_loudly(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_scorer.py").write_text("from .no_such_helper import x\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_helper"):
        _import_package_with(tmp_path, monkeypatch)
    importlib.invalidate_caches()
