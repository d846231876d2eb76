"""`--tokenizer` and `--kv-events-*` of `inferoute serve` and `inferoute epp` -> the pools'
`tokenizer:` / `kvEvents:` keys (parsing only: no sockets, no processes)."""

from __future__ import annotations

import pytest

from inferoute.cli import build_parser
from inferoute.core.endpoint import parse_endpoint
from inferoute.core.errors import ConfigError
from inferoute.datalayer.serving_config import config_from_args
from inferoute.datalayer.kvevents import KVEventsConfig
from inferoute.datalayer.runtime import DataLayer
from inferoute.extproc import command as epp_command
from inferoute.datalayer.precise_flags import apply_precise_flags

SIM_OFFSETS = ["--kv-events-pub-port-offset", "-2443", "--kv-events-replay-port-offset", "-2343"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def addresses(kv_events: dict | None, url: str = "http://127.0.0.1:8001") -> tuple:
    return KVEventsConfig.model_validate(kv_events or {}).addresses(parse_endpoint(url))


def test_serve_flags_fill_the_pool_keys():
    args = parse("serve", "--model", "m", "--endpoint", "http://127.0.0.1:8000",
                 "--endpoint", "http://127.0.0.1:8001", "--scheduler", "precise",
                 "--tokenizer", "words", *SIM_OFFSETS)
    cfg = apply_precise_flags(config_from_args(args), args)
    pool = cfg.pools[0]
    assert pool.tokenizer == "words"
    assert pool.kv_events == {"pubPortOffset": -2443, "replayPortOffset": -2343}
    # replica 1 of `inferoute sim --port 8000 --kv-events` publishes on 5558, replays on 5658
    assert addresses(pool.kv_events) == ("tcp://127.0.0.1:5558", "tcp://127.0.0.1:5658")


def test_epp_pool_mode_gets_tokenizer_and_fixed_ports():
    args = parse("epp", "--pool-name", "qwen", "--pool-namespace", "llm", "--scheduler",
                 "precise", "--tokenizer", "/models/qwen", "--kv-events-pub-port", "6557",
                 "--kv-events-replay-port", "6558")
    cfg = epp_command._serving_config(args)
    pool = cfg.pools[0]
    assert pool.model == "qwen" and pool.endpoints == []
    assert pool.tokenizer == "/models/qwen"
    assert pool.kv_events == {"pubPort": 6557, "replayPort": 6558}
    assert addresses(pool.kv_events, "http://10.1.2.3:8000") == (
        "tcp://10.1.2.3:6557", "tcp://10.1.2.3:6558")


def test_epp_pool_mode_builds_precise_routing_for_discovered_pods():
    """The data layer of the picker has the pool's tokenizer and KV-event settings (nothing
    is started: no scrape, no subscribers until `start()`)."""
    args = parse("epp", "--pool-name", "qwen", "--scheduler", "precise", "--tokenizer", "words",
                 "--kv-events-replay-port", "0")
    cfg = epp_command._serving_config(args)
    assert cfg.pools[0].kv_events == {"replayPort": None}  # 0: no replay socket
    data = DataLayer(cfg, scrape=False)
    precise = data.precise_routing("qwen")
    assert precise is not None
    assert precise.tokenizer is not None
    assert addresses(cfg.pools[0].kv_events) == ("tcp://127.0.0.1:5557", None)


def test_config_file_keys_are_merged_under_the_flags(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("pools:\n"
                    "- model: a\n  endpoints: [http://127.0.0.1:8000]\n  scheduler: precise\n"
                    "  tokenizer: words\n"
                    "  kvEvents: {pub_port: 7000, topic: kv, replayTimeout: 2s}\n"
                    "- model: b\n  endpoints: [http://127.0.0.1:9000]\n")
    args = parse("epp", "--config", str(path), "--kv-events-replay-port", "7001")
    cfg = epp_command._serving_config(args)
    a, b = cfg.pools
    assert a.tokenizer == "words"  # not given on the command line: the file's stays
    assert a.kv_events == {"pubPort": 7000, "topic": "kv", "replayTimeout": 2.0,
                           "replayPort": 7001}
    # the flags apply to every pool, as --scheduler does
    assert b.kv_events == {"replayPort": 7001}


def test_without_the_flags_the_config_is_unchanged():
    args = parse("serve", "--model", "m", "--endpoint", "http://127.0.0.1:8000")
    cfg = config_from_args(args)
    assert apply_precise_flags(cfg, args) is cfg
    assert cfg.pools[0].tokenizer is None and cfg.pools[0].kv_events is None


def test_flags_without_a_precise_scheduler_are_refused(capsys):
    args = parse("serve", "--model", "m", "--endpoint", "http://127.0.0.1:8000",
                 "--tokenizer", "words")
    with pytest.raises(ConfigError, match="--scheduler precise"):
        apply_precise_flags(config_from_args(args), args)
    # epp reports it as a configuration error (exit 2) before opening any socket
    args = parse("epp", "--pool-name", "qwen", "--kv-events-pub-port", "5557")
    assert epp_command.main(args) == 2
    assert "precise-prefix-cache-scorer" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--kv-events-pub-port", "70000"],
                                  ["--kv-events-replay-port", "x"]])
def test_bad_port_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse("epp", "--pool-name", "qwen", "--scheduler", "precise", *argv)
    assert exc.value.code == 2
    assert "port" in capsys.readouterr().err


def test_pub_port_zero_and_bad_tokenizer_setting_are_config_errors():
    args = parse("epp", "--pool-name", "qwen", "--scheduler", "precise",
                 "--kv-events-pub-port", "0")
    with pytest.raises(ConfigError, match="pub-port"):
        epp_command._serving_config(args)
    args = parse("epp", "--pool-name", "qwen", "--scheduler", "precise", "--tokenizer", "")
    with pytest.raises(ConfigError, match="tokenizer"):
        epp_command._serving_config(args)


def test_epp_missing_tokenizer_is_a_clean_error(tmp_path, capsys):
    """The tokenizer is loaded when the pools are built, before any socket is opened."""
    args = parse("epp", "--pool-name", "qwen", "--scheduler", "precise",
                 "--tokenizer", str(tmp_path / "absent"))
    assert epp_command.main(args) == 2
    err = capsys.readouterr().err
    assert "pool 'qwen'" in err and "tokenizer" in err and "Traceback" not in err
