"""The serving config (YAML file and flags): valid forms and the errors users see."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inferoute.core.errors import ConfigError
from inferoute.datalayer.serving_config import (config_from_args, load_serving_config,
                                                  parse_serving_config)
from inferoute.datalayer.runtime import DataLayer

GOOD = """
host: 127.0.0.1
port: 9000
scrapeInterval: 25ms
readyWindow: 2s
upstream: {connectTimeout: 2s, readTimeout: 5m}
pools:
- model: llama
  aliases: [llama-latest]
  loraAdapters: [sql-lora]
  engine: vllm
  endpoints: [http://10.0.0.1:8000, "10.0.0.2:8000"]
  scheduler: round-robin
- model: qwen
  endpoints: [http://10.0.1.1:8000]
  scheduler:
    plugins: [{type: queue-scorer}, {type: max-score-picker}]
    schedulingProfiles:
    - name: default
      plugins: [{pluginRef: queue-scorer, weight: 1}, {pluginRef: max-score-picker}]
"""


def _args(**kw) -> argparse.Namespace:
    base = dict(config=None, model=None, endpoint=None, scheduler=None, engine=None,
                host=None, port=None, scrape_interval=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_full_file(tmp_path: Path):
    f = tmp_path / "serve.yaml"
    f.write_text(GOOD)
    cfg = load_serving_config(f)
    assert (cfg.host, cfg.port, cfg.scrape_interval, cfg.ready_window) == (
        "127.0.0.1", 9000, 0.025, 2.0)
    assert cfg.upstream.read_timeout == 300.0 and cfg.upstream.connect_timeout == 2.0
    data = DataLayer(cfg)
    assert sorted(data.router.model_names()) == ["llama", "llama-latest", "qwen", "sql-lora"]
    llama = data.router.pools["llama"]
    assert [ep.name for ep in llama.pool] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert all(ep.engine == "vllm" for ep in llama.pool)


def test_flags_make_one_pool_with_defaults():
    cfg = config_from_args(_args(model="m", endpoint=["http://a:1", "http://b:2"], port=8081))
    assert cfg.port == 8081 and cfg.scrape_interval == 0.05 and cfg.ready_window == 5.0
    (pool,) = cfg.pools
    assert pool.model == "m" and pool.endpoints == ["http://a:1", "http://b:2"]


def test_flags_override_file(tmp_path: Path):
    f = tmp_path / "serve.yaml"
    f.write_text(GOOD)
    cfg = config_from_args(_args(config=str(f), port=7000, scheduler="random"))
    assert cfg.port == 7000 and all(p.scheduler == "random" for p in cfg.pools)


@pytest.mark.parametrize("data, message", [
    ({"pools": []}, "pools: List should have at least 1 item"),
    ({"pools": [{"model": "m", "endpoints": ["nope"]}]},
     "pools.0.endpoints: endpoints[0]: endpoint 'nope' must look like http://host:port"),
    ({"pools": [{"model": "m", "endpoints": ["http://a:1", "a:1"]}]}, "a:1 is listed twice"),
    ({"pools": [{"model": "m"}, {"model": "n", "aliases": ["m"]}]},
     "model name 'm' is claimed by pools 'm' and 'n'"),
    ({"pools": [{"model": "m", "engine": "tgi"}]}, "pools.0.engine"),
    ({"pools": [{"model": "m", "endpoint": ["http://a:1"]}]},
     "pools.0.endpoint: Extra inputs are not permitted"),
    ({"scrapeInterval": "fast", "pools": [{"model": "m"}]}, "not a duration: 'fast'"),
    ({"port": 70000, "pools": [{"model": "m"}]}, "port: Input should be less than or equal"),
    ({"pools": [{"model": "m", "scheduler": "no-such-policy"}]},
     "pools.0.scheduler: scheduler config 'no-such-policy' is neither a file nor"),
    ({"pools": [{"model": "m", "scheduler": {"plugins": [{"type": "bogus-scorer"}],
                                             "schedulingProfiles": [{"name": "d"}]}}]},
     "unknown type 'bogus-scorer'"),
    (["not", "a", "mapping"], "expected a mapping"),
    ({"pools": [{"model": "m"}], "admission": {"defaultObjective": "nope"}},
     "defaultObjective 'nope' is not among the objectives"),
    ({"pools": [{"model": "m"}], "admission": {"flowControl": {"ttl": "soon"}}},
     "flowControl.ttl"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        cfg = parse_serving_config(data, "test.yaml")
        DataLayer(cfg)  # plugin construction errors surface when the pool is built
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_file_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read serving config"):
        load_serving_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_serving_config(bad)


def test_flag_errors():
    with pytest.raises(ConfigError, match="--model NAME and at least one --endpoint"):
        config_from_args(_args(model="m"))
    with pytest.raises(ConfigError, match="either --config FILE or --model"):
        config_from_args(_args(config="x.yaml", model="m", endpoint=["http://a:1"]))


def test_readiness_follows_the_last_good_scrape():
    from inferoute.core.clock import ManualClock
    from inferoute.core.endpoint import EndpointMetrics

    clock = ManualClock(100.0)
    cfg = parse_serving_config({"readyWindow": "1s", "pools": [
        {"model": "m", "endpoints": ["http://a:1", "http://b:2"]}]})
    data = DataLayer(cfg, clock=clock.now)
    mp = data.router.pools["m"]
    a, b = mp.pool.endpoints()
    assert data.ready_endpoints(mp) == [] and data.ready_count() == 0  # never scraped
    a.metrics = EndpointMetrics(scraped_at=100.0)
    b.metrics = EndpointMetrics(scraped_at=99.5)
    assert data.ready_endpoints(mp, prefer_fresh=False) == [a, b]  # b: ready, stale
    clock.advance(0.8)  # b's scrape is now 1.3 s old
    assert data.ready_endpoints(mp) == [a]
    a.healthy = False
    assert data.ready_endpoints(mp) == [] and data.ready_count() == 0


def test_add_and_remove_endpoints_at_run_time():
    from inferoute.core.endpoint import parse_endpoint

    data = DataLayer(parse_serving_config({"pools": [{"model": "m"}]}), scrape=False)
    ep = data.add_endpoint("m", parse_endpoint("http://10.0.0.9:8000"))
    mp = data.router.pools["m"]
    assert data.ready_endpoints(mp) == [ep]  # scraping disabled: healthy means ready
    assert data.add_endpoint("m", parse_endpoint("http://10.0.0.9:8000")) is ep
    with pytest.raises(ConfigError, match="no pool serves model 'x'"):
        data.add_endpoint("x", parse_endpoint("http://10.0.0.9:8000"))


async def test_listeners_follow_endpoints():
    from inferoute.core.endpoint import parse_endpoint

    events: list[tuple[str, str, str]] = []

    class Listener:
        def endpoint_added(self, model, ep):
            events.append(("add", model, ep.name))

        def endpoint_removed(self, model, ep):
            events.append(("remove", model, ep.name))

    data = DataLayer(parse_serving_config({"pools": [
        {"model": "m", "endpoints": ["http://10.0.0.1:1"]}]}), scrape=False)
    data.add_listener(Listener())
    assert events == []  # nothing until the data layer runs
    await data.start()
    data.add_endpoint("m", parse_endpoint("http://10.0.0.2:1"))
    data.add_endpoint("m", parse_endpoint("http://10.0.0.2:1"))  # an update, not a new one
    data.remove_endpoint("m", "10.0.0.1:1")
    await data.close()
    assert events == [("add", "m", "10.0.0.1:1"), ("add", "m", "10.0.0.2:1"),
                      ("remove", "m", "10.0.0.1:1"), ("remove", "m", "10.0.0.2:1")]


def test_scrape_idle_interval_from_the_file_and_the_flag():
    cfg = parse_serving_config({"scrapeIdleInterval": "2s", "pools": [
        {"model": "m", "endpoints": ["http://a:1"]}]})
    assert cfg.scrape_idle_interval == 2.0
    assert config_from_args(_args(model="m", endpoint=["http://a:1"])).scrape_idle_interval == 1.0
    flag = config_from_args(_args(model="m", endpoint=["http://a:1"], scrape_idle_interval=0.5))
    assert flag.scrape_idle_interval == 0.5
    with pytest.raises(ConfigError, match="scrapeIdleInterval"):
        parse_serving_config({"scrapeIdleInterval": 0, "pools": [
            {"model": "m", "endpoints": ["http://a:1"]}]})
