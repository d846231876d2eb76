"""llm-d's optimized-baseline plugins: in-flight load producer, token-load scorer, affinity filter."""

import random

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics, Pool
from inferoute.core.errors import ConfigError
from inferoute.core.plugins.inflight_load_producer import InFlightTokens
from inferoute.core.request import parse_request
from inferoute.core.router import ModelPool, Router
from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.config import load_config_text
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
    assert flt.filter(ctx, _req(SYSTEM, "a"), eps) == eps  # nothing cached anywhere
    for i, ep in enumerate(eps):  # the prompt lands on every endpoint
        s.schedule(_req(SYSTEM, f"seed{i}"), [ep], 0.0)
    assert flt.filter(CycleContext(now=1.0, rng=random.Random(0)), _req(SYSTEM, "b"), eps) == eps
    other = "x" * 400 + SYSTEM  # differs from the first block on: only eps[0] will hold it
    s.schedule(_req(other, "other"), [eps[0]], 0.0)
    got = flt.filter(CycleContext(now=1.0, rng=random.Random(0)), _req(other, "c"), eps)
    assert got == [eps[0]]


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
    eps = _eps(2)
    s = _scheduler(accounting="request")
    router = Router([ModelPool("m", Pool("m", eps), s)])
    producer = s.plugins["inflight-load-producer"]
    req = _family("alpha ", "one ", "1")
    d = router.schedule(req, 0.0, candidates=eps)
    home = d.result.target
    router.dispatch(d, home, 0.0)
    assert producer.tokens(home) == round(2.5 * req.prompt_tokens_estimate)
    router.first_token(d, 0.5)  # decoding still loads the endpoint
    assert producer.tokens(home) == round(2.5 * req.prompt_tokens_estimate)
    router.finish(d, 1.0)
    assert producer.tokens(home) == 0


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


# llm-d's optimized-baseline plugin config as its guide ships it (llm-d/llm-d,
# guides/optimized-baseline/router/optimized-baseline.values.yaml), unchanged
LLM_D_OPTIMIZED_BASELINE = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: inflight-load-producer
- type: approx-prefix-cache-producer
  parameters:
      maxPrefixTokensToMatch: 40960
- type: prefix-cache-affinity-filter
  parameters:
    affinityThreshold: 0.80
    maxTokensInFlightPenalty: 286720
    maxTTFTPenaltyMs: 0
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""


def test_llm_d_config_loads_unchanged_and_routes_like_the_packaged_policy() -> None:
    theirs = Scheduler(load_config_text(LLM_D_OPTIMIZED_BASELINE, "<llm-d>"), seed=0)
    ours = Scheduler(resolve_config("llm-d-optimized"), seed=0)
    flt = theirs.plugins["prefix-cache-affinity-filter"]
    assert flt.prefix is theirs.plugins["approx-prefix-cache-producer"]
    assert flt.prefix.params.max_prefix_blocks_to_match == 2560
    assert flt.penalty_tokens == 286_720
    eps_a, eps_b = _eps(4), _eps(4)
    ra = Router([ModelPool("m", Pool("m", eps_a), theirs)])
    rb = Router([ModelPool("m", Pool("m", eps_b), ours)])
    for i in range(40):  # dispatched and never finished: the load builds up on both
        fam = ("alpha ", "bravo ", "charlie ", "delta ", "echo ")[i % 5]
        da = ra.schedule(_family(fam, f"q{i} ", f"r{i}"), i * 0.01, candidates=eps_a)
        db = rb.schedule(_family(fam, f"q{i} ", f"r{i}"), i * 0.01, candidates=eps_b)
        ra.dispatch(da, da.result.target, i * 0.01)
        rb.dispatch(db, db.result.target, i * 0.01)
        assert da.result.target.name == db.result.target.name
    assert sum(ep.in_flight_requests for ep in eps_a) == 40


def test_time_form_of_the_gate_and_an_ambiguous_prefix_scorer() -> None:
    text = _config("{maxTTFTPenaltyMs: 18000, peakPrefillThroughput: 15928}")
    flt = Scheduler(load_config_text(text, "<test>")).plugins["prefix-cache-affinity-filter"]
    assert flt.penalty_tokens == pytest.approx(286_704)  # the smaller of the two gates
    two = _config("{}").replace("- type: inflight-load-producer",
                                "- type: approx-prefix-cache-producer\n"
                                "- type: inflight-load-producer")
    with pytest.raises(ConfigError, match="set prefixScorerRef; 2 prefix scorers"):
        Scheduler(load_config_text(two, "<test>"))


def test_exploring_requests_still_count_only_their_uncached_tokens() -> None:
    s = _scheduler(exploration=1.0, accounting="prefill")
    eps = _eps(2)
    first = _family("alpha ", "one ", "1")
    home = s.schedule(first, eps, 0.0).target
    s.on_first_token(first, home, 0.5)
    # make home the emptiest so exploration (every request here) still picks it
    other = eps[1] if home is eps[0] else eps[0]
    _tracked(s).add("x", other.name, 1_000_000)
    second = _family("alpha ", "two ", "2")
    assert s.schedule(second, eps, 1.0).target is home
    assert 0 < _tracked(s).get(home.name) < second.prompt_tokens_estimate // 4
