"""The learned latency model and `latency-slo-scorer`, with an injected clock and a synthetic
fleet whose latency is a known function of its load."""

from __future__ import annotations

import random
from itertools import count

import numpy as np
import pytest

from inferoute.core.endpoint import Pool, parse_endpoint
from inferoute.core.errors import BadRequest, TooManyRequests
from inferoute.core.latency_model import ErrorWindow, RecursiveLeastSquares
from inferoute.core.plugins.latency_slo_scorer import LatencySloScorer
from inferoute.core.plugins.prefix_match import MATCHED_TOKENS
from inferoute.core.request import InferenceRequest
from inferoute.core.router import ModelPool, Router
from inferoute.core.scheduling.config import parse_config
from inferoute.core.scheduling.scheduler import Scheduler

_ids = count()


def test_rls_recovers_a_linear_law_and_follows_a_change() -> None:
    rng = np.random.default_rng(1)
    rls = RecursiveLeastSquares(3, forgetting=0.98)
    for _ in range(300):
        x = np.array((1.0, rng.uniform(0, 4), rng.uniform(0, 2)))
        y = 0.2 + 0.5 * x[1] + 0.1 * x[2]
        rls.update(x, y, 1.0 / y)
    assert np.allclose(rls.theta, (0.2, 0.5, 0.1), atol=1e-3)
    for _ in range(300):  # the endpoint got twice as slow
        x = np.array((1.0, rng.uniform(0, 4), rng.uniform(0, 2)))
        rls.update(x, 2 * (0.2 + 0.5 * x[1] + 0.1 * x[2]))
    assert np.allclose(rls.theta, (0.4, 1.0, 0.2), atol=1e-2)


def test_error_window_keeps_the_first_and_the_last_checks() -> None:
    w = ErrorWindow(size=3)
    assert w.median() is None
    for predicted in (2.0, 1.5, 1.2, 1.0, 1.0, 1.1):
        w.add(predicted, 1.0)
    assert w.first_median() == pytest.approx(0.5)
    assert w.median() == pytest.approx(0.0)
    assert w.count == 6


POLICY = {
    "plugins": [{"type": "latency-slo-scorer",
                 "parameters": {"usePrefixMatch": False, "minSamples": 20}},
                {"type": "in-flight-scorer"}, {"type": "max-score-picker"}],
    "schedulingProfiles": [{"name": "default", "plugins": [
        {"pluginRef": "latency-slo-scorer", "weight": 3},
        {"pluginRef": "in-flight-scorer", "weight": 1},
        {"pluginRef": "max-score-picker"}]}],
}


class Fleet:
    """Endpoints whose TTFT is 20 ms + prompt tokens queued there / their prefill rate, and TPOT
    5 ms + 0.5 ms per request in flight; time is told, never read."""

    def __init__(self, rates: tuple[float, ...]) -> None:
        self.eps = [parse_endpoint(f"http://10.0.0.{i + 1}:8000") for i in range(len(rates))]
        self.rate = {ep.name: r for ep, r in zip(self.eps, rates)}
        sched = Scheduler(parse_config(POLICY), seed=3)
        self.scorer = sched.plugins["latency-slo-scorer"]
        assert isinstance(self.scorer, LatencySloScorer)
        self.router = Router([ModelPool("m", Pool("m", self.eps), sched)])
        self.queued = {ep.name: 0.0 for ep in self.eps}
        self.events: list[tuple[float, int, str, object]] = []
        self.now = 0.0

    def send(self, tokens: int, headers: dict[str, str] | None = None, priority: int = 0,
             out: int = 50) -> object:
        req = InferenceRequest(request_id=f"r{next(_ids)}", api="completions", model="m",
                               body={}, headers=headers or {}, prefix_text="w" * (4 * tokens),
                               max_tokens=out, priority=priority)
        d = self.router.schedule(req, self.now, self.eps)
        ep = d.result.target
        self.router.dispatch(d, ep, self.now)
        self.queued[ep.name] += tokens
        ttft = 0.02 + self.queued[ep.name] / self.rate[ep.name]
        tpot = 0.005 + 0.0005 * ep.in_flight_requests
        self.events.append((self.now + ttft, 0, "first", (d, ep, tokens)))
        self.events.append((self.now + ttft + tpot * (out - 1), 1, "end", (d, out)))
        return d

    def advance(self, until: float) -> None:
        self.events.sort(key=lambda e: (e[0], e[1]))
        while self.events and self.events[0][0] <= until:
            t, _, kind, payload = self.events.pop(0)
            self.now = t
            if kind == "first":
                d, ep, tokens = payload
                self.queued[ep.name] -= tokens
                self.router.first_token(d, t)
            else:
                d, out = payload
                self.router.finish(d, t, {"completion_tokens": out})
        self.now = until


def _run(fleet: Fleet, n: int, rng: random.Random, gap: float = 0.05) -> None:
    for _ in range(n):
        fleet.send(rng.randrange(200, 3000))
        fleet.advance(fleet.now + rng.expovariate(1 / gap))


def test_the_error_falls_as_the_model_learns() -> None:
    fleet = Fleet((40_000.0, 20_000.0, 10_000.0))
    _run(fleet, 800, random.Random(5))
    st = fleet.scorer.stats()
    assert st["ttft_checks"] > 700 and st["tpot_checks"] > 700
    assert st["ttft_error"] < 0.5 * st["ttft_error_first"]
    assert st["ttft_error"] < 0.15 and st["tpot_error"] < 0.15
    assert fleet.scorer.latency_errors() == {"ttft": st["ttft_error"], "tpot": st["tpot_error"]}


def test_slo_headers_steer_to_an_endpoint_predicted_to_meet_them() -> None:
    fleet = Fleet((80_000.0, 2_000.0))
    rng = random.Random(9)
    _run(fleet, 400, rng)
    fleet.advance(fleet.now + 60)  # everything drained
    slow, fast = fleet.eps[1], fleet.eps[0]
    fleet.send(4000, out=2)  # without a target, in-flight-scorer sends the next one ...
    d = fleet.send(4000, {"x-slo-ttft-ms": "500"})  # ... with one, only where it is met
    assert d.result.target is fast  # 4,000 tokens at 2,000/s take 2 s on the slow one
    assert slow.name != fast.name


def test_a_sheddable_request_no_endpoint_can_serve_in_time_gets_429() -> None:
    fleet = Fleet((20_000.0, 20_000.0))
    _run(fleet, 300, random.Random(2))
    with pytest.raises(TooManyRequests) as exc:
        fleet.send(30_000, {"x-slo-ttft-ms": "100"}, priority=-1)
    assert exc.value.status == 429 and exc.value.code == "slo_unattainable"
    assert "TTFT" in exc.value.message and "against 100 ms" in exc.value.message
    # the same request at priority 0 is routed anyway (to miss its target as little as it can)
    assert fleet.send(30_000, {"x-slo-ttft-ms": "100"}).result.target in fleet.eps
    assert fleet.scorer.stats()["shed"] == 1


def test_an_untrained_model_never_sheds() -> None:
    fleet = Fleet((20_000.0,))
    d = fleet.send(30_000, {"x-slo-ttft-ms": "1"}, priority=-1)
    assert d.result.target is fleet.eps[0]


@pytest.mark.parametrize("value", ["fast", "0", "-5", "nan", "inf"])
def test_a_bad_slo_header_is_a_400(value: str) -> None:
    fleet = Fleet((20_000.0,))
    with pytest.raises(BadRequest) as exc:
        fleet.send(100, {"x-slo-tpot-ms": value})
    assert exc.value.status == 400 and exc.value.param == "x-slo-tpot-ms"


def test_tracking_is_bounded_and_forgets_removed_endpoints(monkeypatch) -> None:
    from inferoute.core.plugins import latency_slo_scorer

    monkeypatch.setattr(latency_slo_scorer, "MAX_TRACKED", 10)
    fleet = Fleet((20_000.0, 20_000.0))
    for _ in range(30):
        fleet.send(100)
    assert len(fleet.scorer._tracked) == 10
    fleet.scorer.on_endpoint_removed(fleet.eps[0])
    assert all(rec.endpoint != fleet.eps[0].name for rec in fleet.scorer._tracked.values())


def test_without_a_target_only_the_chosen_endpoint_is_predicted(monkeypatch) -> None:
    """A decision without an SLO does not use the predictions, so it makes none; the chosen
    endpoint's, made in `on_scheduled`, is the one a full prediction would have made."""
    from inferoute.core.plugins import latency_slo_scorer
    from inferoute.core.scheduling.framework import CycleContext

    fleet = Fleet((40_000.0, 20_000.0, 10_000.0))
    _run(fleet, 300, random.Random(4))
    fleet.send(2000)  # one in flight, so the candidates' loads differ
    calls: list[int] = []
    real = latency_slo_scorer.predict_pool
    monkeypatch.setattr(latency_slo_scorer, "predict_pool",
                        lambda models, *rows: calls.append(len(models)) or real(models, *rows))
    scorer = fleet.scorer

    def cycle(headers: dict[str, str]) -> CycleContext:
        ctx = CycleContext(now=fleet.now, rng=random.Random(0))
        req = InferenceRequest(request_id=f"r{next(_ids)}", api="completions", model="m",
                               body={}, headers=headers, prefix_text="w" * 4000, max_tokens=50)
        assert scorer.score(ctx, req, fleet.eps) == [1.0, 1.0, 1.0]
        return ctx

    full = cycle({"x-slo-ttft-ms": "100000", "x-slo-tpot-ms": "100000"})
    ttft_only, lazy = cycle({"x-slo-ttft-ms": "100000"}), cycle({})
    assert calls == [3]  # a TTFT target alone predicts every TTFT without `predict_pool`
    assert ttft_only.get(scorer._key).ttft == full.get(scorer._key).ttft
    for ep in fleet.eps:
        a = full.get(scorer._key).tracked(ep.name, scorer._model)
        for ctx in (lazy, ttft_only):
            b = ctx.get(scorer._key).tracked(ep.name, scorer._model)
            assert a is not None and b is not None and a.ttft > 0.0
            assert (b.ttft, b.tpot, b.x_ttft, b.x_tpot) == (a.ttft, a.tpot, a.x_ttft, a.x_tpot)


def _old_predictions(preds, models):
    """What a decision predicted before its features were built a column at a time and its
    dot products written out (the code as it was, for the test below)."""
    from operator import mul

    from inferoute.core.latency_model import EndpointLoad
    from inferoute.core.plugins.latency_slo_scorer import _IDLE

    x_ttft, x_tpot, ttft, tpot = [], [], [], []
    for name, m, model in zip(preds.names, preds.metrics, models):
        own = preds.loads.get(name) or _IDLE
        load = EndpointLoad(own.prefill_tokens, own.running, own.context_tokens, m.waiting,
                            m.kv_usage)
        uncached = max(0.0, preds.prompt - preds.matched.get(name, 0))
        queued, batch = load.queued_prefill_tokens, load.running / 64.0
        mine, ahead = uncached / 1000.0, queued / 1000.0
        x_ttft.append((1.0, mine, ahead, (mine + ahead) * batch, batch, load.waiting / 8.0))
        x_tpot.append((1.0, batch, load.context_tokens / 100_000.0, queued / 10_000.0,
                       load.kv_usage))
        ttft.append(max(0.0, sum(map(mul, model.ttft.coef, x_ttft[-1]))))
        tpot.append(max(0.0, sum(map(mul, model.tpot.coef, x_tpot[-1]))))
    return x_ttft, x_tpot, ttft, tpot


def test_predictions_equal_the_old_code() -> None:
    """A decision's features and predictions, every candidate's, equal what the code before
    the column-wise rewrite gave, bit for bit (Python 3.12's `sum` compensates, so there the
    old figures may differ in the last bit: compared to 1e-12)."""
    import dataclasses
    import sys

    from inferoute.core.scheduling.framework import CycleContext

    fleet = Fleet((40_000.0, 20_000.0, 10_000.0, 5_000.0))
    rng = random.Random(11)
    scorer = fleet.scorer
    checked = trained = 0
    for step in range(300):
        fleet.send(rng.randrange(200, 3000))
        fleet.advance(fleet.now + rng.expovariate(1 / 0.03))
        if step % 10:
            continue
        for ep in fleet.eps:  # scraped state the features read
            ep.metrics = dataclasses.replace(ep.metrics, waiting=rng.randrange(9),
                                             kv_usage=rng.random())
        ctx = CycleContext(now=fleet.now, rng=random.Random(0))
        ctx.put(MATCHED_TOKENS, {ep.name: rng.randrange(4000) for ep in fleet.eps[:3]})
        headers = rng.choice([{"x-slo-ttft-ms": "100"}, {"x-slo-tpot-ms": "6"},
                              {"x-slo-ttft-ms": "100", "x-slo-tpot-ms": "6"}])
        req = InferenceRequest(request_id=f"r{next(_ids)}", api="completions", model="m",
                               body={}, headers=headers,
                               prefix_text="w" * 4 * rng.randrange(100, 4000), max_tokens=50)
        scores = scorer.score(ctx, req, fleet.eps)
        preds = ctx.get(scorer._key)
        old = _old_predictions(preds, [scorer._model(ep.name) for ep in fleet.eps])
        if "x-slo-tpot-ms" not in headers:  # every TTFT in the decision, the rest once chosen
            assert not preds.x_ttft and not preds.tpot
            recs = [preds.tracked(ep.name, scorer._model) for ep in fleet.eps]
            assert [rec.ttft for rec in recs] == preds.ttft  # type: ignore[union-attr]
            preds.x_ttft, preds.x_tpot, preds.tpot = (
                [getattr(rec, f) for rec in recs] for f in ("x_ttft", "x_tpot", "tpot"))
        new = (preds.x_ttft, preds.x_tpot, preds.ttft, preds.tpot)
        if sys.version_info < (3, 12):
            assert new == old
            # the scores as the old code made them from its predictions
            ttft_slo, tpot_slo = (float(headers[h]) / 1000 if h in headers else None
                                  for h in ("x-slo-ttft-ms", "x-slo-tpot-ms"))
            ratio = [max(t / ttft_slo if ttft_slo else 0.0, p / tpot_slo if tpot_slo else 0.0)
                     for t, p in zip(old[2], old[3])]
            best_miss = min((r for r in ratio if r > 1.0), default=1.0)
            assert scores == [1.0 if r <= 1.0 else 0.5 * best_miss / r for r in ratio]
        else:
            for a, b in zip(new, old):
                assert np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                   rtol=1e-12, atol=0.0)
        checked += 1
        trained += all(t > 0.0 for t in preds.ttft + preds.tpot)
    assert checked == 30 and trained >= 20  # the models had learnt: non-zero predictions
