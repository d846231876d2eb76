"""The core's public surface: every module says what it exports, and exports what it says."""

from __future__ import annotations

import importlib

from .test_import_layers import _modules

#: modules without `__all__`: packages that only group modules
EXEMPT = {"inferoute.core", "inferoute.core.plugins", "inferoute.core.scheduling"}


def test_every_core_module_declares_what_it_exports() -> None:
    core = sorted(m for m in _modules() if m.startswith("inferoute.core") and m not in EXEMPT)
    assert len(core) > 40
    for name in core:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported, f"{name} has no __all__"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it does not define: {missing}"
