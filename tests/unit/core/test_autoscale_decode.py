"""The estimator's decode cost (what a request's decode shares its replica with) and the pooled
queue it sizes with once that cost is measured."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from inferoute.configfiles import resolve_config
from inferoute.core.autoscale import Autoscaler, AutoscaleSpec, PoolEstimator
from inferoute.core.autoscale_queue import (
    OVER_SHARE,
    erlang_c,
    over_share_per_replica,
    over_share_pooled,
    replicas_for_target,
)
from inferoute.core.decode_cost import DecodeTracker
from inferoute.core.endpoint import Pool
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.scheduler import Scheduler

#: a simulated engine's step: 15 ms fixed, 0.2 ms per running request; prefill 1e-4 s a token
STEP, DELTA, B = 0.015, 2e-4, 1e-4


def _feed_decodes(est: PoolEstimator, *, rate: float, seconds: float, start: float = 0.0,
                  uncached: int = 1000, output: int = 100, beta: float = B,
                  prefilled: Callable[[float, int], float] = lambda n, i: 2000.0) -> float:
    """`rate` arrivals/s, each alone at its prefill (TTFT = u b), decoding beside 10 to 50
    others (by arrival) in steps of STEP + DELTA n, with `prefilled(n, i)` prompt tokens
    prefilled there meanwhile at `beta` seconds a token."""
    n = int(rate * seconds)
    for i in range(n):
        t = start + i / rate
        decoders = 10 + 40 * (i % 9) / 8
        tokens = prefilled(decoders, i)
        decode = (output - 1) * (STEP + DELTA * decoders) + beta * tokens
        est.arrived(t)
        est.finished("ep0", t, prompt_tokens=uncached, cached_tokens=0, output_tokens=output,
                     ttft=B * uncached, e2e=B * uncached + decode, decoders=decoders,
                     prefilled=tokens)
    return start + n / rate


def test_the_tracker_measures_what_a_decode_shared_its_replica_with() -> None:
    dt = DecodeTracker()
    first = dt.started("ep0", 0.0, uncached=1000)
    assert dt.decoding("ep0") == 1
    second = dt.started("ep0", 2.0, uncached=3000)  # a prefill completed at 2 s
    other = dt.started("ep1", 2.5, uncached=500)  # another replica: not counted
    # the first decoded 0-4 s: alone for 2 s, with the second for 2 s; 3,000 tokens prefilled
    assert dt.ended(first, 4.0) == (pytest.approx(1.5), pytest.approx(3000))
    # the second decoded 2-6 s: with the first for 2 s, then alone; nothing prefilled
    assert dt.ended(second, 6.0) == (pytest.approx(1.5), pytest.approx(0.0))
    assert dt.decoding("ep0") == 0 and dt.decoding("ep1") == 1
    assert dt.ended(other, 2.5) is None  # no time passed: nothing to measure
    assert dt._state == {}  # nothing decodes: nothing kept


def test_router_feeds_the_decode_counts(make_ep, make_req) -> None:
    ep = make_ep(0)
    mp = ModelPool("m", Pool("m", [ep]), Scheduler(resolve_config("round-robin"), seed=1))
    router = Router([mp])
    auto = Autoscaler(AutoscaleSpec())
    router.listeners.append(auto)
    ds = []
    for i in range(2):  # first tokens at 1 and 2 s, ends at 5 and 3 s
        req = make_req("word " * 400, model="m")
        req.stream, req.arrival_time = True, float(i)
        d = router.schedule(req, now=float(i))
        router.dispatch(d, d.result.target, now=float(i))
        router.first_token(d, now=i + 1.0)
        ds.append(d)
    router.finish(ds[1], now=3.0, usage={"prompt_tokens": 500, "completion_tokens": 9})
    router.finish(ds[0], now=5.0, usage={"prompt_tokens": 500, "completion_tokens": 9})
    late, early = auto.pools["m"]._samples
    assert (late.decoders, late.prefilled) == (pytest.approx(2.0), 0.0)
    # the first decoded 1-5 s, beside the second from 2 to 3 s, whose ~500-token prompt
    # completed at 2 s
    assert early.decoders == pytest.approx(1.25)
    assert early.prefilled == pytest.approx(500)
    assert ds[0].decode_mark is None and auto._decoding.decoding(ep.name) == 0


def test_the_step_time_a_running_request_adds_is_measured(make_ep) -> None:
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_decodes(est, rate=10, seconds=60)
    e = est.estimate(t, [make_ep(0)])
    assert e.decode_step == pytest.approx(DELTA)
    # a request's work: its prompt and output tokens at the prefill's cost, and what its
    # output tokens add to their steps (their reads of the KV cache)
    assert e.work == pytest.approx(B * (1000 + 100) + DELTA * 100)
    # the counts not tracked (another gateway's feed, or none): not measured, as before
    plain = PoolEstimator(AutoscaleSpec(horizon=0))
    for i in range(600):
        plain.arrived(i / 10)
        plain.finished("ep0", i / 10, prompt_tokens=1000, cached_tokens=0, output_tokens=100,
                       ttft=0.1, e2e=2.0)
    p = plain.estimate(60.0, [make_ep(0)])
    assert p.decode_step is None and p.work == pytest.approx(B * 1100)


def test_the_prefills_within_a_decode_are_costed_at_their_own_speed(make_ep) -> None:
    """The unqueued TTFT's b holds more than a step's cost per prompt token (the front end,
    the attention's growth with the prompt), and more decodes beside a request come with
    more prefills: b in their place reads delta low. Fitted together, delta is the step's."""
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    # prefilled there meanwhile: 300 tokens per request decoding beside, +-1,000 by arrival;
    # in the steps a token costs 0.6 b
    t = _feed_decodes(est, rate=10, seconds=60, beta=0.6 * B,
                      prefilled=lambda n, i: 300 * n + 1000 * (i % 7 - 3))
    e = est.estimate(t, [make_ep(0)])
    assert e.decode_step == pytest.approx(DELTA)
    # the work: every token at a step's cost, not the TTFT line's
    assert e.work == pytest.approx(0.6 * B * 1100 + DELTA * 100)


def test_one_windows_fit_does_not_swing_the_step_cost(make_ep) -> None:
    """The step cost is the median of the last windows' fits: a window whose prompt tokens
    read at a third of the cost the windows before it read moves nothing (it cut Mooncake's
    work per request by 45% for 12 minutes), and a cost that stays changed is followed once
    it holds for most of the windows kept."""
    est = PoolEstimator(AutoscaleSpec(window=60, horizon=0))

    def prefilled(n: float, i: int) -> float:  # P varies apart from n: beta is measured
        return 300 * n + 1000 * (i % 7 - 3)

    ready = [make_ep(0)]
    t = 0.0
    for _ in range(3):
        t = _feed_decodes(est, rate=10, seconds=60, start=t, beta=0.6 * B, prefilled=prefilled)
        assert est.estimate(t, ready).work == pytest.approx(0.6 * B * 1100 + DELTA * 100)
    t = _feed_decodes(est, rate=10, seconds=60, start=t, beta=0.2 * B, prefilled=prefilled)
    assert est.estimate(t, ready).work == pytest.approx(0.6 * B * 1100 + DELTA * 100)
    for _ in range(2):
        t = _feed_decodes(est, rate=10, seconds=60, start=t, beta=0.2 * B,
                          prefilled=prefilled)
        est.estimate(t, ready)
    # three of the five windows kept read 0.2 b: their median is theirs
    assert est.estimate(t, ready).work == pytest.approx(0.2 * B * 1100 + DELTA * 100)


def test_a_noisy_decode_line_keeps_the_last_one(make_ep) -> None:
    est = PoolEstimator(AutoscaleSpec(window=60, horizon=0))
    t = _feed_decodes(est, rate=10, seconds=60)
    assert est.estimate(t, [make_ep(0)]).decode_step == pytest.approx(DELTA)
    for i in range(600):  # a minute of decodes all beside 20 others: no spread, no slope
        est.arrived(t + i / 10)
        est.finished("ep0", t + i / 10, prompt_tokens=1000, cached_tokens=0,
                     output_tokens=100, ttft=0.1, e2e=0.1 + 99 * (STEP + DELTA * 20),
                     decoders=20.0, prefilled=0.0)
    assert est.estimate(t + 60, [make_ep(0)]).decode_step == pytest.approx(DELTA)


def test_erlang_c() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: the chance to wait is rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0


def test_a_pooled_queue_needs_fewer_replicas_than_queues_apart() -> None:
    unqueued = [0.1 + 0.01 * i for i in range(20)]
    lam, work = 20.0, 0.25
    m2 = 1.1 * work * work
    pooled = replicas_for_target(
        lambda n, t: over_share_pooled(n, lam, work, m2, unqueued, t), lam, work, unqueued, 1.0)
    apart = replicas_for_target(
        lambda n, t: over_share_per_replica(n, lam, work, m2, unqueued, t), lam, work,
        unqueued, 1.0)
    assert lam * work < pooled < apart
    assert over_share_pooled(pooled, lam, work, m2, unqueued, 1.0) == pytest.approx(
        OVER_SHARE, abs=1e-6)
    # on whole counts it is M/G/n: Erlang C and an exponential wait of mean
    # E[P^2] / (2 E[S]) / (n - lambda E[S]), P the prefill work waited behind
    n = math.ceil(pooled)
    mean = m2 / (2 * work) / (n - lam * work)
    share = sum(erlang_c(n, lam * work) * math.exp(-(1.0 - x) / mean) for x in unqueued) / 20
    assert over_share_pooled(n, lam, work, m2, unqueued, 1.0) == pytest.approx(share)


def test_with_the_decode_measured_the_pool_is_sized_as_one_queue(make_ep) -> None:
    """A router that balances pools the replicas' queues; the decode's cost, measured, keeps
    that from undersizing: more work per request than the prompt's tokens at the prefill
    speed, and fewer replicas than N queues apart with that same work."""
    # sized for the forecast itself (z = 0), the rate the formula below is given
    est = PoolEstimator(AutoscaleSpec(horizon=0, max_replicas=100, rate_quantile=0.5))
    ready = [make_ep(i) for i in range(40)]
    t = _feed_decodes(est, rate=60, seconds=60)
    e = est.estimate(t, ready)
    assert e.decode_step == pytest.approx(DELTA)
    work = B * 1100 + DELTA * 100
    unqueued = [B * 1000] * 20
    # the wait: behind the prefills queued before it, (b u)^2 their second moment
    pooled = replicas_for_target(
        lambda n, t: over_share_pooled(n, e.arrival_rate, work, (B * 1000) ** 2, unqueued, t),
        e.arrival_rate, work, unqueued, 1.0)
    assert e.ttft_replicas == pytest.approx(pooled)
    apart = replicas_for_target(
        lambda n, t: over_share_per_replica(n, e.arrival_rate, work, (B * 1000) ** 2,
                                            unqueued, t), e.arrival_rate, work, unqueued, 1.0)
    assert e.arrival_rate * work < e.ttft_replicas < apart



def _feed_answers(est: PoolEstimator, *, rate: float, seconds: float, start: float = 0.0,
                  fixed: float = 0.02, b: float = B, beta: float = B, stream: bool = False,
                  unqueued: bool = True, noise: float = 0.0) -> float:
    """`rate` arrivals/s of prompts of 500-2,000 uncached tokens and 50-150 output tokens,
    each alone at its prefill (TTFT = fixed + u b), decoding beside 10 to 50 others in steps
    of STEP + DELTA n, with 100 n +- 600 prompt tokens prefilled there meanwhile at `beta`;
    `stream=False`: no first token is timed, only the answer's end, off by up to +-`noise`
    seconds (a fixed pattern)."""
    n = int(rate * seconds)
    for i in range(n):
        t = start + i / rate
        uncached, output = 500 + 1500 * (i % 7) / 6, 50 + 100 * (i % 5) / 4
        decoders = 10 + 40 * (i % 9) / 8
        tokens = 100 * decoders + 200 * (i % 7 - 3)
        ttft = fixed + b * uncached
        e2e = ttft + (output - 1) * (STEP + DELTA * decoders) + beta * tokens \
            + noise * ((i * 7919) % 11 - 5) / 5
        est.arrived(t)
        est.finished("ep0", t, prompt_tokens=int(uncached), cached_tokens=0,
                     output_tokens=int(output), ttft=ttft if stream else None, e2e=e2e,
                     decoders=decoders, prefilled=tokens, unqueued=unqueued)
    return start + n / rate


def test_answers_not_streamed_measure_the_speeds_from_their_ends(make_ep) -> None:
    """No first token is timed, but e2e = a + b u + (O - 1) (c0 + delta n) + beta P is
    linear in what the router saw: the same prefill line, step cost and work as the same
    requests streamed, so the pool is sized alike (before, it held its ready count)."""
    ready = [make_ep(i, running=5, kv_usage=0.1) for i in range(2)]
    whole = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_answers(whole, rate=10, seconds=60, beta=0.6 * B)
    e = whole.estimate(t, ready)
    assert e.measured and e.prefill_speed == pytest.approx(1 / B)
    mean_u = sum(smp.uncached for smp in whole._samples) / len(whole._samples)
    assert e.unqueued_ttft == pytest.approx(0.02 + B * mean_u)  # a + b u: the line's
    assert e.decode_step == pytest.approx(DELTA)
    streamed = PoolEstimator(AutoscaleSpec(horizon=0))
    _feed_answers(streamed, rate=10, seconds=60, beta=0.6 * B, stream=True)
    s = streamed.estimate(t, ready)
    assert e.work == pytest.approx(s.work)
    assert e.ttft_replicas == pytest.approx(s.ttft_replicas)
    # the time in service (Little's law for the KV need): the prefill line and the decode
    assert e.kv_replicas == pytest.approx(s.kv_replicas)
    # the load halves: the count follows it down
    later = _feed_answers(whole, rate=5, seconds=120, start=t, beta=0.6 * B)
    assert whole.estimate(later, ready).ttft_replicas < 0.75 * e.ttft_replicas


def test_short_prompts_lost_in_the_noise_still_measure_the_decode(make_ep) -> None:
    """Prompts whose prefill costs less than the answers' timing noise: b is not clear of
    its error, yet the decode's step cost is, and it sizes the pool (no prefill speed is
    reported)."""
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_answers(est, rate=10, seconds=60, b=1e-6, beta=1e-6, noise=0.05)
    e = est.estimate(t, [make_ep(i) for i in range(3)])
    assert e.measured and e.prefill_speed is None
    assert e.decode_step == pytest.approx(DELTA, rel=0.1)
    assert e.replicas is not None and e.replicas < 3


def test_a_prefill_line_lost_in_a_later_window_is_kept(make_ep) -> None:
    """Once the answers have given a prefill line, a window whose b is not clear of its
    error (a rise in load, whose shared steps its intercept takes) keeps the line: engine A's
    prefill read as free there asked for 2 replicas where 4 were needed."""
    ready = [make_ep(i) for i in range(3)]
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_answers(est, rate=10, seconds=60)
    first = est.estimate(t, ready)
    assert first.prefill_speed == pytest.approx(1 / B)
    t = _feed_answers(est, rate=10, seconds=60, start=t, fixed=0.3, b=1e-6, noise=0.05)
    later = est.estimate(t, ready)
    assert later.prefill_speed == pytest.approx(1 / B)
    assert later.unqueued_ttft == pytest.approx(first.unqueued_ttft)  # the line's a + b u
    assert later.decode_step == pytest.approx(DELTA, rel=0.1)


def test_answers_that_waited_in_a_queue_measure_nothing(make_ep) -> None:
    """An answer sent to a replica with a queue holds its wait: no speed from it, and the
    ready count holds (the saturated rule acts only where every replica has a queue)."""
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_answers(est, rate=10, seconds=60, unqueued=False)
    e = est.estimate(t, [make_ep(i) for i in range(3)])
    assert not e.measured and e.desired == 3


def _routed(eps: list) -> tuple[Router, Autoscaler]:
    """A round-robin pool "m" of `eps` with an autoscaler listening."""
    mp = ModelPool("m", Pool("m", eps), Scheduler(resolve_config("round-robin"), seed=1))
    router = Router([mp])
    auto = Autoscaler(AutoscaleSpec())
    router.listeners.append(auto)
    return router, auto


def _request(make_req: Callable, *, stream: bool, at: float):
    req = make_req("word " * 400, model="m")
    req.stream, req.arrival_time = stream, at
    return req


def test_router_counts_an_answer_not_streamed_from_its_dispatch(make_ep, make_req) -> None:
    """A request that is not streamed: its replica's decoders and prefills are counted from
    its dispatch to its end; it holds no prefill mark, so a streamed request sent there
    meanwhile is still alone at its prefill unless it is sent after it."""
    ep = make_ep(0)
    router, auto = _routed([ep])
    d = router.schedule(_request(make_req, stream=False, at=0.0), now=0.0)
    router.dispatch(d, d.result.target, now=0.0)
    assert d.prefill_mark is None and d.decode_mark is not None
    assert auto._prefilling == {} and auto._sent == {}
    s = router.schedule(_request(make_req, stream=True, at=1.0), now=1.0)
    router.dispatch(s, s.result.target, now=1.0)
    assert s.unqueued  # nothing streamed was prefilling there
    router.first_token(s, now=1.5)
    router.first_token(d, now=4.0)  # the whole answer's first byte: at its end
    router.finish(d, now=4.0, usage={"prompt_tokens": 500, "completion_tokens": 40})
    router.finish(s, now=5.0, usage={"prompt_tokens": 500, "completion_tokens": 9})
    answer = next(smp for smp in auto.pools["m"]._samples if smp.ttft is None)
    # from 0 to 4 s, beside the streamed one's decode from 1.5 s; its ~500-token prompt
    # completed there at 1.5 s
    assert answer.decoders == pytest.approx(1 + 2.5 / 4)
    assert answer.prefilled == pytest.approx(500)
    assert answer.e2e == pytest.approx(4.0)
    assert auto._decoding.decoding(ep.name) == 0 and auto._prefilling == {}


def test_a_retried_answer_is_counted_on_its_last_replica_only(make_ep, make_req) -> None:
    """A request that is not streamed, retried on another replica: the first attempt's count
    ends at the retry, the second's at the end; nothing stays counted."""
    eps = [make_ep(0), make_ep(1)]
    router, auto = _routed(eps)
    d = router.schedule(_request(make_req, stream=False, at=0.0), now=0.0)
    router.dispatch(d, eps[0], now=0.0)
    assert auto._decoding.decoding(eps[0].name) == 1
    router.dispatch(d, eps[1], now=1.0)  # the first attempt failed: sent again elsewhere
    assert auto._decoding.decoding(eps[0].name) == 0
    assert auto._decoding.decoding(eps[1].name) == 1
    router.finish(d, now=3.0, usage={"prompt_tokens": 500, "completion_tokens": 20})
    assert auto._decoding._state == {} and d.decode_mark is None
    (answer,) = auto.pools["m"]._samples
    assert answer.endpoint == eps[1].name and answer.decoders == pytest.approx(1.0)


@pytest.mark.parametrize("stream", [False, True])
def test_arrivals_after_a_quiet_spell_hold_the_ready_count(make_ep, stream: bool) -> None:
    """A fit kept from an earlier window, then a quiet spell longer than the window and new
    arrivals none of which has finished yet: the window has no finished request to size
    with, so the ready count holds (the estimate divided by zero there before, on Azure's
    code trace, on and off by the minute)."""
    ready = [make_ep(i) for i in range(2)]
    est = PoolEstimator(AutoscaleSpec(horizon=0))
    t = _feed_answers(est, rate=10, seconds=60, stream=stream)
    assert est.estimate(t, ready).measured
    later = t + 2 * est.spec.window
    est.arrived(later)
    e = est.estimate(later + 1, ready)
    assert not e.measured and e.desired == len(ready)
