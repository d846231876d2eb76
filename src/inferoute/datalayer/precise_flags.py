"""The precise-scoring pool settings as command-line flags, shared by `inferoute serve` and
`inferoute epp`: `--tokenizer` and `--kv-events-*` set every pool's `tokenizer:` / `kvEvents:`.

Light to import (argparse only; the config machinery is imported when the flags are applied),
so the commands' `--help` stays fast."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from .serving_config import ServingConfig


#: `--kv-events-*` flag (argparse dest) -> `kvEvents:` key (KVEventsConfig alias)
_KV_EVENT_FLAGS = {"kv_events_pub_port": "pubPort", "kv_events_replay_port": "replayPort",
                   "kv_events_pub_port_offset": "pubPortOffset",
                   "kv_events_replay_port_offset": "replayPortOffset"}


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


def add_precise_flags(p: argparse.ArgumentParser) -> None:
    """The precise-scoring pool settings as flags (`inferoute serve` and `inferoute epp`)."""
    g = p.add_argument_group(
        "precise prefix scoring (scheduler 'precise'; pool keys tokenizer/kvEvents, "
        "docs/precise-routing.md; with --config they replace those keys in every pool)")
    g.add_argument("--tokenizer", metavar="PATH|words",
                   help="the model's tokenizer: a local tokenizer.json or Hugging Face "
                        "tokenizer directory (nothing is downloaded), or 'words' for "
                        "`inferoute sim`")
    g.add_argument("--kv-events-pub-port", type=_port_arg, metavar="N",
                   help="port of each endpoint's KV-event PUB socket, on the endpoint's host "
                        "(default 5557, vLLM's)")
    g.add_argument("--kv-events-replay-port", type=_port_arg, metavar="N",
                   help="port of each endpoint's KV-event replay socket (default 5558; 0: "
                        "none, no gap filling)")
    g.add_argument("--kv-events-pub-port-offset", type=int, metavar="N",
                   help="PUB port = the endpoint's HTTP port + N instead (several replicas "
                        "per host; `inferoute sim --port 8000 --kv-events`: -2443)")
    g.add_argument("--kv-events-replay-port-offset", type=int, metavar="N",
                   help="replay port = the endpoint's HTTP port + N (`inferoute sim`: -2343)")


def apply_precise_flags(config: ServingConfig, args: argparse.Namespace) -> ServingConfig:
    """`config` with every pool's `tokenizer:` / `kvEvents:` set from the flags of
    `add_precise_flags` (kvEvents keys merged over the pool's own); unchanged without them.

    ConfigError when they are given but no pool's scheduler has a precise-prefix-cache-scorer
    (they would be ignored silently otherwise)."""
    from ..core.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
    from .kvevents import KVEventsConfig
    from .serving_config import parse_serving_config

    tokenizer = getattr(args, "tokenizer", None)
    kv: dict[str, Any] = {}
    for dest, key in _KV_EVENT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            kv[key] = None if key == "replayPort" and value == 0 else value
    if tokenizer is None and not kv:
        return config
    if kv.get("pubPort") == 0:
        raise ConfigError("--kv-events-pub-port must be 1-65535")
    precise = PrecisePrefixCacheScorer.type_name
    if not any(spec.type == precise for pc in config.pools
               for spec in pc.scheduler_config().plugins):
        raise ConfigError("--tokenizer and --kv-events-* configure precise prefix scoring: "
                          "use them with a scheduler that has a precise-prefix-cache-scorer "
                          "(e.g. --scheduler precise)")
    data = config.model_dump(by_alias=False)
    for pool in data["pools"]:
        if tokenizer is not None:
            pool["tokenizer"] = tokenizer
        if kv:
            own = pool.get("kv_events") or {}
            own = KVEventsConfig.model_validate(own).model_dump(by_alias=True,
                                                                 exclude_unset=True)
            pool["kv_events"] = {**own, **kv}
    return parse_serving_config(data, "the --tokenizer/--kv-events-* flags")
