"""Router: model -> pool resolution, LoRA adapters, dispatch/finish bookkeeping."""

from __future__ import annotations

import pytest

from inferoute.core.endpoint import Pool, parse_endpoint
from inferoute.core.errors import ModelNotFound, NoEndpointAvailable
from inferoute.core.router import ModelPool, Router
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.scheduler import Scheduler


def router(n: int = 3, policy: str = "round-robin") -> Router:
    pool = Pool("base", [parse_endpoint(f"http://127.0.0.1:{9000 + i}") for i in range(n)])
    mp = ModelPool("base", pool, Scheduler(resolve_config(policy), seed=1), aliases=("alias",),
                   lora_adapters=("sql-lora",))
    return Router([mp])


def test_resolve_names_aliases_and_adapters(make_req) -> None:
    r = router()
    assert set(r.model_names()) == {"base", "alias", "sql-lora"}
    req = make_req(model="sql-lora")
    assert r.resolve(req).model == "base" and req.lora_adapter == "sql-lora"
    plain = make_req(model="alias")
    assert r.resolve(plain).model == "base" and plain.lora_adapter is None
    with pytest.raises(ModelNotFound) as exc:
        r.resolve(make_req(model="nope"))
    assert exc.value.status == 404 and "'nope'" in exc.value.message


def test_duplicate_names_are_refused() -> None:
    r = router()
    other = ModelPool("other", Pool("other"), Scheduler(), aliases=("alias",))
    with pytest.raises(ValueError, match="served by two pools"):
        r.add_pool(other)


def test_no_ready_endpoint_is_503(make_req) -> None:
    r = router(n=2)
    for ep in r.pools["base"].pool:
        ep.healthy = False
    with pytest.raises(NoEndpointAvailable) as exc:
        r.schedule(make_req(model="base"), now=0.0)
    assert exc.value.status == 503


def test_dispatch_and_finish_are_idempotent(make_req) -> None:
    r = router()
    d = r.schedule(make_req("x" * 400, model="base"), now=0.0)
    target = d.result.target
    r.dispatch(d, target, now=0.0)
    r.dispatch(d, target, now=0.0)  # the same endpoint again: no double count
    assert target.in_flight_requests == 1 and target.in_flight_tokens == 100
    r.finish(d, now=1.0)
    r.finish(d, now=2.0)
    assert target.in_flight_requests == 0 and target.in_flight_tokens == 0


def test_fallback_moves_the_in_flight_count(make_req) -> None:
    r = router()
    d = r.schedule(make_req("y" * 40, model="base"), now=0.0)
    target, fallback = d.result.targets[:2]
    r.dispatch(d, target, now=0.0)
    r.dispatch(d, fallback, now=0.1)  # target failed before the first byte
    assert (target.in_flight_requests, fallback.in_flight_requests) == (0, 1)
    assert d.endpoint is fallback
    r.finish(d, now=1.0)
    assert sum(ep.in_flight_requests for ep in r.pools["base"].pool) == 0
    assert sum(ep.in_flight_tokens for ep in r.pools["base"].pool) == 0


def test_finish_without_dispatch_touches_nothing(make_req) -> None:
    r = router()
    d = r.schedule(make_req(model="base"), now=0.0)
    r.finish(d, now=0.0)
    assert d.finished and all(ep.in_flight_requests == 0 for ep in r.pools["base"].pool)


def test_fallback_dispatch_corrects_the_prefix_index(make_req) -> None:
    pool = Pool("base", [parse_endpoint(f"http://127.0.0.1:{9000 + i}") for i in range(3)])
    r = Router([ModelPool("base", pool, Scheduler(seed=2))])  # default llm-d config
    prefix = r.pools["base"].scheduler.plugins["prefix-cache-scorer"]
    d = r.schedule(make_req("p" * 64 * 5, model="base"), now=0.0)
    target, fallback = d.result.targets[:2]
    assert prefix.index.size(target.name) == 5
    r.dispatch(d, target, now=0.0)
    r.dispatch(d, fallback, now=0.1)
    assert prefix.index.size(target.name) == 0 and prefix.index.size(fallback.name) == 5
    r.finish(d, now=1.0)
    # the next request with the same prompt follows the blocks to the fallback
    assert r.schedule(make_req("p" * 64 * 5, model="base"), now=2.0).result.target is fallback
