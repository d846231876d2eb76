"""llm-d's optimized-baseline plugins: in-flight load producer, token-load scorer, affinity filter."""

import random

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.errors import ConfigError
from inferoute.core.plugins.tokenload import InFlightTokens
from inferoute.core.request import parse_request
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.config import load_config_text, resolve_config
from inferoute.core.scheduling.framework import CycleContext
from inferoute.core.scheduling.scheduler import Scheduler

SYSTEM = "s" * 6000 * 4  # 6,000 tokens of shared prefix (4 characters a token)


def _req(prompt: str, rid: str):
    return parse_request("completions", {"model": "m", "prompt": prompt, "max_tokens": 8}, {},
                         request_id=rid)


def _family(fam: str, q: str, rid: str):
    """A prompt of 6,000 family tokens then 1,200 question tokens (83% shared)."""
    return _req(fam * (6000 * 4 // len(fam)) + q * (1200 * 4 // len(q)), rid)


def _eps(n: int) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i}", port=8000,
                     metrics=EndpointMetrics(num_blocks=100_000, block_size=16, scraped_at=0.0))
            for i in range(n)]


def _config(filter_params: str, producer_params: str = "{}") -> str:
    return f"""
plugins:
- type: prefix-cache-scorer
  parameters: {{maxPrefixBlocksToMatch: 2560}}
- type: inflight-load-producer
  parameters: {producer_params}
- type: prefix-cache-affinity-filter
  parameters: {filter_params}
- type: token-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""


def _scheduler(exploration: float = 0.0, penalty: int = 286_720,
               accounting: str = "prefill") -> Scheduler:
    text = _config(f"{{explorationProbability: {exploration}, "
                   f"maxTokensInFlightPenalty: {penalty}}}", f"{{accounting: {accounting}}}")
    return Scheduler(load_config_text(text, "<test>"), seed=0)


def _tracked(s: Scheduler) -> InFlightTokens:
    return s.plugins["inflight-load-producer"].inflight


def test_inflight_tokens_add_move_release_bounded() -> None:
    t = InFlightTokens(max_tracked=2)
    t.add("a", "e1", 100)
    t.add("b", "e1", 50)
    assert t.get("e1") == 150
    t.move("b", "e2")
    assert (t.get("e1"), t.get("e2")) == (100, 50)
    t.release("a")
    t.release("a")  # idempotent
    assert t.get("e1") == 0
    t.add("c", "e2", 10)
    t.add("d", "e2", 1)  # past max_tracked: the oldest ("b") is forgotten, its tokens too
    assert len(t) == 2 and t.get("e2") == 11
    t.forget_endpoint("e2")
    assert len(t) == 0 and t.get("e2") == 0


def test_family_sticks_to_its_endpoint_and_tokens_clear_on_first_token() -> None:
    s = _scheduler()
    eps = _eps(4)
    first = _family("alpha ", "one ", "1")
    home = s.schedule(first, eps, 0.0).target
    # nothing cached anywhere: the whole prompt is uncached on the target
    assert _tracked(s).get(home.name) == first.prompt_tokens_estimate
    # a sibling (83% shared) is sticky to `home` although home has prefill queued and the
    # others are idle
    for i in range(5):
        assert s.schedule(_family("alpha ", f"q{i} ", f"s{i}"), eps, 0.1).target is home
    # ... and only its uncached question counts on home for those
    queued = _tracked(s).get(home.name)
    assert first.prompt_tokens_estimate < queued < first.prompt_tokens_estimate + 5 * 1300
    s.on_first_token(first, home, 1.0)
    assert _tracked(s).get(home.name) == queued - first.prompt_tokens_estimate
    s.on_finished(first, home, 2.0, None)  # after the first token: nothing more to release
    assert _tracked(s).get(home.name) == queued - first.prompt_tokens_estimate


def test_new_family_goes_where_least_prefill_is_queued() -> None:
    s = _scheduler()
    eps = _eps(3)
    a = s.schedule(_family("alpha ", "one ", "1"), eps, 0.0).target
    b = s.schedule(_family("bravo ", "one ", "2"), eps, 0.0).target
    c = s.schedule(_family("charlie ", "one ", "3"), eps, 0.0).target
    assert len({a.name, b.name, c.name}) == 3  # no sticky endpoint: token load spreads them


def test_stickiness_breaks_when_the_sticky_endpoint_is_far_busier() -> None:
    s = _scheduler(penalty=20_000)
    eps = _eps(2)
    home = s.schedule(_family("alpha ", "one ", "1"), eps, 0.0).target
    other = eps[1] if home is eps[0] else eps[0]
    # pile 40k unrelated prompt tokens on home; home still holds alpha's prefix
    _tracked(s).add("x", home.name, 40_000)
    assert s.schedule(_family("alpha ", "two ", "2"), eps, 0.1).target is other
    # with the gate off (penalty 0) the family sticks whatever the load
    s0 = _scheduler(penalty=0)
    home0 = s0.schedule(_family("alpha ", "one ", "1"), eps, 0.0).target
    _tracked(s0).add("x", home0.name, 10_000_000)
    assert s0.schedule(_family("alpha ", "two ", "2"), eps, 0.1).target is home0


def test_exploration_keeps_every_endpoint() -> None:
    s = _scheduler(exploration=1.0)
    eps = _eps(2)
    home = s.schedule(_family("alpha ", "one ", "1"), eps, 0.0).target
    # always exploring: the token-load scorer alone decides, and home has prefill queued
    assert s.schedule(_family("alpha ", "two ", "2"), eps, 0.1).target is not home


def test_filter_keeps_all_when_nothing_or_everything_is_sticky() -> None:
    s = _scheduler()
    flt = s.plugins["prefix-cache-affinity-filter"]
    eps = _eps(3)
    ctx = CycleContext(now=0.0, rng=random.Random(0))
    assert flt.filter(ctx, _req(SYSTEM, "a"), eps) == eps


@pytest.mark.parametrize("params, missing", [
    ("{prefixScorerRef: nope}", "prefixScorerRef 'nope' names no configured scorer"),
    ("{inFlightLoadProducerName: gone}",
     "inFlightLoadProducerName 'gone' names no configured inflight-load-producer"),
])
def test_missing_referenced_plugins_are_config_errors(params: str, missing: str) -> None:
    text = _config(params)
    with pytest.raises(ConfigError, match=missing):
        Scheduler(load_config_text(text, "<test>"))


def test_request_accounting_counts_prompt_and_output_until_the_end() -> None:
    s = _scheduler(accounting="request")
    eps = _eps(2)
    req = _family("alpha ", "one ", "1")
    home = s.schedule(req, eps, 0.0).target
    expected = req.prompt_tokens_estimate + round(1.5 * req.prompt_tokens_estimate)
    assert _tracked(s).get(home.name) == expected
    s.on_first_token(req, home, 0.5)  # decoding still loads the endpoint
    assert _tracked(s).get(home.name) == expected
    s.on_finished(req, home, 1.0, None)
    assert _tracked(s).get(home.name) == 0


def test_router_reports_the_first_token_once() -> None:
    eps = _eps(2)
    sched = _scheduler(accounting="prefill")
    router = Router([ModelPool("m", Pool("m", eps), sched)])
    req = _family("alpha ", "one ", "1")
    d = router.schedule(req, 0.0, candidates=eps)
    router.dispatch(d, d.result.target, 0.0)
    target = d.result.target.name
    assert _tracked(sched).get(target) == req.prompt_tokens_estimate
    router.first_token(d, 0.5)
    assert _tracked(sched).get(target) == 0 and d.first_token
    # a second report, or one after the end, changes nothing
    _tracked(sched).add("other", target, 7)
    router.first_token(d, 0.6)
    router.finish(d, 1.0)
    router.first_token(d, 1.1)
    assert _tracked(sched).get(target) == 7


def test_packaged_policy_is_llm_d_v08() -> None:
    sched = Scheduler(resolve_config("llm-d-optimized"), seed=0)
    producer = sched.plugins["inflight-load-producer"]
    assert producer.params.accounting == "request"
    flt = sched.plugins["prefix-cache-affinity-filter"]
    assert (flt.params.affinity_threshold, flt.params.max_tokens_in_flight_penalty) == (0.8, 286_720)
