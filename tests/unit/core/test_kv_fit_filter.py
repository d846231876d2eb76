"""`kv-fit-filter`: a request goes only where its KV need fits (a family's prefix counted once
per endpoint), and waiting requests are released family by family."""

import random

import pytest

from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.core.plugins.kv_fit_filter import KvFitFilter
from inferoute.core.request import InferenceRequest, parse_request
from inferoute.core.scheduling.framework import CycleContext

BLOCK_CHARS = 64  # 16 tokens x 4 characters


def _req(family: str, own: str, rid: str, max_tokens: int = 160) -> InferenceRequest:
    """A prompt of 40 blocks of `family` (640 tokens) and 5 of its own (80 tokens)."""
    prompt = family * (40 * BLOCK_CHARS) + own * (5 * BLOCK_CHARS)
    return parse_request("completions", {"model": "m", "prompt": prompt,
                                         "max_tokens": max_tokens}, {}, request_id=rid)


def _eps(blocks: list[int]) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i}", port=8000,
                     metrics=EndpointMetrics(num_blocks=n, block_size=16, scraped_at=0.0))
            for i, n in enumerate(blocks)]


def _fit(**params: float) -> KvFitFilter:
    """The filter counting each request's whole output (the figures below are exact), holding
    always unless the test measures when it holds."""
    return KvFitFilter(params=KvFitFilter.Params(
        **{"output_share": 1.0, "recompute_to_hold": 0.0, **params}))


def _filter(f: KvFitFilter, req: InferenceRequest, eps: list[Endpoint]) -> list[str]:
    return [ep.name for ep in f.filter(CycleContext(now=0.0, rng=random.Random(0)), req, eps)]


def test_a_familys_prefix_counts_once_per_endpoint() -> None:
    f = _fit()
    (ep,) = _eps([1000])
    f.on_served(_req("a", "x", "1"), ep, 0.0)
    # seen once: the whole prompt is the family's prefix (720 tokens) + 160 out
    assert f.stats()["endpoints"][ep.name]["need_tokens"] == 720 + 160
    f.on_served(_req("a", "y", "2"), ep, 0.0)
    # the second request fixes the prefix at the 40 shared blocks: it adds its own 80 + 160
    # only (the family's prefix is charged already)
    assert f.stats()["endpoints"][ep.name]["need_tokens"] == 720 + 160 + 80 + 160
    assert f.stats()["endpoints"][ep.name]["families_in_flight"] == 1


def test_by_default_half_of_a_requests_output_counts() -> None:
    f = KvFitFilter()
    (ep,) = _eps([1000])
    f.on_served(_req("a", "x", "1", max_tokens=160), ep, 0.0)
    assert f.stats()["endpoints"][ep.name]["need_tokens"] == 720 + 80


def test_the_filter_keeps_endpoints_where_the_need_fits_or_all_when_none_does() -> None:
    f = _fit()
    eps = _eps([60, 60])  # 960 tokens each
    f.on_served(_req("a", "x", "1"), eps[0], 0.0)
    f.on_served(_req("a", "y", "2"), eps[0], 0.0)  # need 960: full
    # another family does not fit on the full endpoint; its own family would not either
    assert _filter(f, _req("b", "z", "3"), eps) == [eps[1].name]
    f.on_served(_req("b", "z", "3"), eps[1], 0.0)
    assert _filter(f, _req("c", "w", "4"), eps) == [eps[0].name, eps[1].name]


def test_finishing_frees_the_need_and_a_first_token_the_prefill_slot() -> None:
    f = _fit()
    (ep,) = _eps([1000])
    a1, a2 = _req("a", "x", "1"), _req("a", "y", "2")
    f.on_served(a1, ep, 0.0)
    f.on_served(a2, ep, 0.0)
    assert f.stats()["endpoints"][ep.name]["pending"] == 2
    f.on_first_token(a1, ep, 0.1)
    assert f.stats()["endpoints"][ep.name]["pending"] == 1
    f.on_finished(a1, ep, 0.2, None)
    f.on_finished(a2, ep, 0.2, None)
    assert f.stats()["endpoints"][ep.name] == {"need_tokens": 0, "pending": 0, "families_in_flight": 0}


def test_release_prefers_the_oldest_request_of_a_family_the_endpoint_runs() -> None:
    f = _fit()
    (ep,) = _eps([10_000])
    f.on_served(_req("a", "x", "1"), ep, 0.0)
    waiting = [_req("b", "y", "2"), _req("c", "y", "3"), _req("a", "y", "4"),
               _req("a", "z", "5")]
    # "b" waited longest, but "a" is in flight there: its prefix is shared, not recomputed
    assert f.choose(waiting, [ep], 0.0) == 2
    f.on_finished(_req("a", "x", "1"), ep, 0.1, None)
    # "a" finished and is still cached there (its prefix fits in what is free): still first
    assert f.choose([_req("b", "y", "6"), _req("a", "w", "7")], [ep], 0.1) == 1


def test_release_takes_the_oldest_when_no_family_is_affine_and_holds_when_nothing_fits() -> None:
    f = _fit()
    (ep,) = _eps([60])  # 960 tokens
    waiting = [_req("b", "y", "2"), _req("c", "y", "3")]
    assert f.choose(waiting, [ep], 0.0) == 0  # nothing in flight: the oldest goes
    f.on_served(waiting[0], ep, 0.0)
    # "c" needs 720 + 160 more: past the capacity, it waits in the gateway
    assert f.choose([waiting[1]], [ep], 0.0) is None
    f.on_finished(waiting[0], ep, 1.0, None)
    assert f.choose([waiting[1]], [ep], 1.0) == 0


def _waiting(family: str, rid: str, arrived: float) -> InferenceRequest:
    """A request of `family` that arrived (began waiting) at `arrived`."""
    prompt = family * (40 * BLOCK_CHARS) + rid * (5 * BLOCK_CHARS)
    return parse_request("completions", {"model": "m", "prompt": prompt, "max_tokens": 160},
                         {}, request_id=rid, arrival_time=arrived)


@pytest.mark.parametrize(("arrived", "opened"), [
    # nothing affine: "b" waited longest (3 s), but "c"'s two requests 2 + 2 s together, and
    # one prefill serves both
    ((7.0, 8.0, 8.0), 1),
    # a lone request goes once it waited longer than a family in total (6 s against 4)
    ((4.0, 8.0, 8.0), 0),
    # equal totals (4 s against 2 + 2 s): the oldest
    ((6.0, 8.0, 8.0), 0),
    # not in arrival order: the queue ordered "b" first (its deadline is the earliest)
    ((9.0, 7.0, 8.0), 0),
])
def test_release_opens_the_family_whose_requests_waited_longest_in_total(
        arrived: tuple[float, float, float], opened: int) -> None:
    (ep,) = _eps([10_000])
    waiting = [_waiting(fam, str(i), t) for i, (fam, t) in enumerate(zip("bcc", arrived))]
    assert _fit().choose(waiting, [ep], 10.0) == opened


def test_release_goes_to_the_endpoint_with_the_fewest_prefills_pending() -> None:
    f = _fit()
    eps = _eps([10_000, 10_000])
    a1, b1, a2 = _req("a", "x", "1"), _req("b", "x", "2"), _req("a", "y", "3")
    assert f.choose([a1], eps, 0.0) == 0
    assert _filter(f, a1, eps) == [eps[0].name]  # reserved there
    f.on_served(a1, eps[0], 0.0)
    # eps[0] has one prefill pending: an unrelated family goes to the idle endpoint
    assert f.choose([b1], eps, 0.0) == 0
    assert _filter(f, b1, eps) == [eps[1].name]
    f.on_served(b1, eps[1], 0.0)
    f.on_first_token(a1, eps[0], 0.1)
    # placed, not reserved: the filter keeps every endpoint it fits, and the scorers choose
    assert f.place(a2, eps, 0.1) is eps[0]
    assert _filter(f, a2, eps) == [eps[0].name, eps[1].name]


def test_a_reserved_request_is_charged_once_where_it_is_served() -> None:
    f = _fit()
    eps = _eps([10_000, 10_000, 10_000])
    req = _req("a", "x", "1")
    assert f.choose([req], eps, 0.0) == 0
    (name,) = _filter(f, req, eps)
    (ep,) = [e for e in eps if e.name == name]
    f.on_served(req, ep, 0.0)
    assert f.stats()["endpoints"][ep.name]["need_tokens"] == 720 + 160
    assert sum(st["need_tokens"] for st in f.stats()["endpoints"].values()) == 720 + 160


def test_a_reservation_never_sent_is_dropped() -> None:
    f = _fit(reservation_seconds=5.0)
    (ep,) = _eps([10_000])
    assert f.choose([_req("a", "x", "1")], [ep], 0.0) == 0
    assert f.stats()["endpoints"][ep.name]["pending"] == 1
    f.choose([_req("b", "x", "2")], [ep], 6.0)  # the first was released, never sent
    assert f.stats()["endpoints"][ep.name]["need_tokens"] == 720 + 160
    assert f.stats()["endpoints"][ep.name]["pending"] == 1


def _usage(cached: int) -> dict:
    return {"prompt_tokens": 720, "completion_tokens": 160,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish_returning(f: KvFitFilter, ep: Endpoint, cached: int, n: int, tag: str) -> None:
    """`n` requests of family "a" (prefix 640 tokens once the second is seen) served and
    finished, their servers reporting `cached` prompt tokens."""
    for i in range(n):
        r = _req("a", chr(98 + i % 20), f"{tag}{i}")
        f.on_served(r, ep, 0.0)
        f.on_finished(r, ep, 0.0, _usage(cached))


def test_it_holds_only_while_the_servers_recompute_returning_families() -> None:
    f = _fit(recompute_window=4, recompute_to_hold=0.5)
    eps = _eps([60, 60])  # 960 tokens each
    assert not f.holding and not f.active  # nothing measured yet: nothing says they thrash
    _finish_returning(f, eps[0], 640, 3, "hit")  # prefixes found cached: nothing recomputed
    assert f.stats()["recompute_share"] == 0.0 and not f.holding
    # not thrashing: admission does not ask the rule, and the filter keeps every endpoint
    assert not f.active
    f.on_served(_req("a", "x", "full"), eps[0], 0.0)
    f.on_served(_req("b", "x", "full2"), eps[1], 0.0)  # both endpoints full now
    late = _req("c", "x", "late")
    assert _filter(f, late, eps) == [eps[0].name, eps[1].name]
    # the servers start recomputing the prefixes: the average crosses 0.5 and it holds
    _finish_returning(f, eps[0], 0, 3, "miss")
    # two hits (the first request of "a" was new), then 1/3, then a window of 4: 0.625
    assert f.stats()["recompute_share"] == pytest.approx(0.625) and f.holding and f.active
    # the requests served while it was not active are charged: it fits nowhere now
    assert f.place(late, eps, 0.0) is None
    assert f.choose([late], eps, 0.0) is None


def test_only_the_prefixs_whole_engine_blocks_count_as_cacheable() -> None:
    """An engine with 256-token blocks caches 512 of a 640-token prefix at best; counted
    against all 640, every perfect hit read as 20% recomputed and the rule held."""
    f = _fit(recompute_window=4, recompute_to_hold=0.1)
    ep = Endpoint(host="10.0.0.9", port=8000,
                  metrics=EndpointMetrics(num_blocks=100, block_size=256, scraped_at=0.0))
    _finish_returning(f, ep, 512, 3, "hit")
    assert f.stats()["recompute_share"] == 0.0 and not f.holding
    _finish_returning(f, ep, 256, 2, "half")  # half the cacheable prefix recomputed
    assert f.stats()["recompute_share"] == pytest.approx(0.5 * 2 / 4)


def test_first_requests_of_a_family_and_silent_servers_do_not_count() -> None:
    f = _fit(recompute_to_hold=0.1)
    (ep,) = _eps([10_000])
    reqs = [_req("z", c, str(i)) for i, c in enumerate("xyw")]
    f.on_served(reqs[0], ep, 0.0)
    f.on_finished(reqs[0], ep, 0.0, _usage(0))  # its family was new: nothing could be cached
    f.on_served(reqs[1], ep, 0.0)
    f.on_finished(reqs[1], ep, 0.0, {"prompt_tokens": 720})  # no cached tokens reported
    assert f.stats()["recompute_share"] is None and not f.holding  # no sample: no hold
    f.on_served(reqs[2], ep, 0.0)
    f.on_finished(reqs[2], ep, 0.0, _usage(0))  # a returning family, all recomputed
    assert f.stats()["recompute_share"] == 1.0 and f.holding  # the mean of the samples so far


def test_unrelated_prompts_give_no_sample_and_the_rule_does_not_hold() -> None:
    """Without prompt families nothing is recomputed over and over: the load goes as it would
    without the rule (holding by the KV need alone changed what such loads got)."""
    f = KvFitFilter()
    (ep,) = _eps([60])
    for i in range(3):  # unrelated prompts, the server saying none was cached
        r = _req(chr(100 + i), "x", str(i))
        f.on_served(r, ep, 0.0)
        f.on_finished(r, ep, 0.0, _usage(0))
    assert f.stats()["recompute_share"] is None and not f.holding


def test_always_holding_with_a_zero_threshold() -> None:
    f = _fit(recompute_to_hold=0.0)
    (ep,) = _eps([10_000])
    _finish_returning(f, ep, 640, 3, "hit")
    assert f.stats()["recompute_share"] == 0.0 and f.holding


def test_the_servers_hit_counters_alone_measure_the_share() -> None:
    """A default vLLM reports no cached tokens, and a stream carries no usage unless its
    client asks: the scraped `prefix_cache_hits` counter then decides whether it holds."""
    f = _fit(recompute_to_hold=0.5)
    (ep,) = _eps([10_000])
    hits = 0.0

    def serve(family: str, rid: str, hit: int) -> None:
        nonlocal hits
        r = _req(family, rid, rid)
        f.on_served(r, ep, 0.0)
        now = float(rid)
        hits += hit  # scraped after the request was scheduled, before its first token
        ep.metrics = EndpointMetrics(num_blocks=10_000, block_size=16, scraped_at=now + 0.5,
                                     prefix_cache_hits=hits)
        f.on_first_token(r, ep, now + 0.5)
        f.on_finished(r, ep, now + 1, None)  # no usage

    serve("a", "0", 0)  # the family's first request: the counter's baseline
    serve("a", "1", 640)  # the second fixes the prefix (40 blocks, 640 tokens): cached
    for i in range(2, 18):  # returning requests whose prefixes were found cached
        serve("a", str(i), 640)
    assert f.stats()["recompute_share"] == 0.0 and not f.holding
    for i in range(18, 50):  # the server recomputes them now
        serve("a", str(i), 0)
    assert f.stats()["recompute_share"] > 0.5 and f.holding


@pytest.mark.parametrize("server_tokens, cached", [(576, 512), (900, 640)])
def test_the_prefix_is_counted_in_the_servers_tokens(server_tokens: int, cached: int) -> None:
    """The gateway estimates four characters a token. Where the server counts fewer (text of
    five characters a token: 576 for the estimated 720), a wholly cached prefix is 512 of its
    tokens, not 640, and reads as nothing recomputed; where it counts more (900: a template,
    code), the estimate is kept, so a cached prefix never reads as recomputed either."""
    f = _fit(recompute_window=4, recompute_to_hold=0.1)
    (ep,) = _eps([10_000])
    for i in range(3):
        r = _req("a", chr(98 + i), str(i))
        f.on_served(r, ep, 0.0)
        f.on_finished(r, ep, 0.0, {"prompt_tokens": server_tokens,
                                   "prompt_tokens_details": {"cached_tokens": cached * (i > 0)}})
    assert f.stats()["recompute_share"] == 0.0 and not f.holding
