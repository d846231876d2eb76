"""The serving config's precise-routing keys and what `DataLayer` builds from them (no sockets:
nothing here starts the data layer)."""

from __future__ import annotations

import pytest

from inferoute.core.errors import ConfigError
from inferoute.datalayer.serving_config import parse_serving_config
from inferoute.datalayer.prefix_share import SharedKVIndex, SharedPrefixIndex
from inferoute.datalayer.runtime import DataLayer
from inferoute.datalayer.tokenize import WordsTokenizer


def config(redis: str | None = None, **pool: object):  # type: ignore[no-untyped-def]
    return parse_serving_config({"redis": redis, "pools": [
        {"model": "m", "endpoints": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"], **pool}]})


def test_precise_pool_gets_tokenizer_and_subscriber_settings() -> None:
    cfg = config(scheduler="precise", tokenizer="words",
                 kvEvents={"pubPortOffset": -2443, "replayPortOffset": -2343})
    data = DataLayer(cfg)
    routing = data.precise_routing("m")
    assert routing is not None
    assert isinstance(routing.tokenizer, WordsTokenizer)
    scorer = data.router.pools["m"].scheduler.plugins["precise-prefix-cache-scorer"]
    assert routing.scorers == [scorer]
    assert routing.managers[0].index is scorer.index
    ep = next(iter(data.router.pools["m"].pool))
    assert routing.managers[0].config.addresses(ep) == ("tcp://10.0.0.1:5557",
                                                         "tcp://10.0.0.1:5657")
    assert data.sharing is None


def test_pools_without_a_precise_scorer_have_no_precise_routing() -> None:
    data = DataLayer(config(scheduler="llm-d"))
    assert data.precise_routing("m") is None


def test_redis_shares_every_prefix_index_before_the_subscribers_exist() -> None:
    precise = DataLayer(config("redis://127.0.0.1:1/0", scheduler="precise", tokenizer="words"))
    scorer = precise.router.pools["m"].scheduler.plugins["precise-prefix-cache-scorer"]
    assert isinstance(scorer.index, SharedKVIndex)
    routing = precise.precise_routing("m")
    assert routing is not None and routing.managers[0].index is scorer.index
    approx = DataLayer(config("redis://127.0.0.1:1/0", scheduler="llm-d"))
    assert isinstance(approx.router.pools["m"].scheduler.plugins["prefix-cache-scorer"].index,
                      SharedPrefixIndex)
    assert approx.sharing is not None and approx.sharing.client is None  # connects at start()


@pytest.mark.parametrize("pool, message", [
    ({"kvEvents": {"pubPort": "x"}}, "pools.0.kvEvents: pubPort"),
    ({"kvEvents": {"port": 5557}}, "pools.0.kvEvents: port: Extra inputs"),
    ({"tokenizer": {"kind": "sentencepiece"}}, "pools.0.tokenizer: kind"),
    ({"tokenizer": {"chatTemplate": "t.jinja"}}, "needs 'path'"),
])
def test_bad_precise_keys_name_the_key(pool: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**pool)


def test_missing_tokenizer_directory_names_the_pool(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = config(scheduler="precise", tokenizer=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="pool 'm': "):
        DataLayer(cfg)
