"""Semantic routing for `"model": "auto"`: prompt classification, PII and jailbreak guards, and
a per-tenant semantic cache, all in-process and offline. See docs/semantic.md.

The public names are imported lazily so `inferoute --help` does not pay for numpy and the
embedding model.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SemanticRouter": ".router", "RouteOutcome": ".router", "BodyChanges": ".router",
    "SemanticConfig": ".config", "load_config": ".config", "parse_config": ".config",
    "CachedReply": ".cache", "StreamCollector": ".cache", "SemanticCache": ".cache",
    "replay_json": ".replay", "replay_sse": ".replay", "ContentBlocked": ".guards",
}

__all__ = ["BodyChanges", "CachedReply", "ContentBlocked", "RouteOutcome", "SemanticCache",
           "SemanticConfig", "SemanticRouter", "StreamCollector", "load_config", "parse_config",
           "replay_json", "replay_sse"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inferoute.semantic' has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)
