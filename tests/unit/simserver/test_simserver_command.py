"""`inferoute sim` flags -> replica configurations (no sockets)."""

from __future__ import annotations

import pytest

from inferoute.cli import build_parser
from inferoute.core.errors import ConfigError
from inferoute.sim.command import build_configs


def _configs(*argv: str):
    return build_configs(build_parser().parse_args(["sim", *argv]))


def test_ports_and_kv_ports_follow_the_replica_index():
    cfgs = _configs("--model", "m", "--port", "9000", "--replicas", "3", "--profile", "tiny",
                    "--kv-events")
    assert [c.port for c in cfgs] == [9000, 9001, 9002]
    assert [c.kv_pub_port for c in cfgs] == [5557, 5558, 5559]
    assert [c.kv_replay_port for c in cfgs] == [5657, 5658, 5659]
    assert all(c.kv_events and not c.lora_enabled for c in cfgs)
    cfgs = _configs("--model", "m", "--replicas", "2", "--profile", "tiny",
                    "--kv-events-port", "7000", "--kv-replay-port", "7100")
    assert [(c.kv_pub_port, c.kv_replay_port) for c in cfgs] == [(7000, 7100), (7001, 7101)]
    cfgs = _configs("--model", "m", "--profile", "tiny", "--kv-events-port", "0")
    assert (cfgs[0].kv_pub_port, cfgs[0].kv_replay_port) == (0, 0)   # random ports


def test_lora_and_fault_flags():
    c = _configs("--model", "m", "--profile", "tiny", "--max-loras", "3", "--lora", "a",
                 "--lora", "b", "--fault-rate", "0.25", "--fault-kinds", "503,drop",
                 "--time-scale", "2")[0]
    assert c.lora_enabled and c.profile.max_loras == 3 and c.loras == ["a", "b"]
    assert c.faults.rate == 0.25 and c.faults.kinds == ["503", "drop"] and c.time_scale == 2


@pytest.mark.parametrize("argv", [
    ("--port", "1"),                                            # no --model
    ("--model", "m", "--replicas", "0"),
    ("--model", "m", "--port", "65535", "--replicas", "2"),
    ("--model", "m", "--lora", "m"),
    ("--model", "m", "--lora", "a", "--lora", "a"),
    ("--model", "m", "--max-loras", "0"),
    ("--model", "m", "--fault-kinds", "404"),
])
def test_bad_flags_are_config_errors(argv):
    with pytest.raises(ConfigError):
        _configs("--profile", "tiny", *argv)
