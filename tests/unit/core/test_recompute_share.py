"""The recompute share of returning families' prefixes: exact samples from usage; until the
first, the servers' prefix-cache hit counters set against the first tokens their scrapes
cover, in decayed sums."""

import pytest

from inferoute.core.plugins.recompute_share import RecomputeShare


def test_usage_samples_are_a_plain_mean_then_an_exponential_average() -> None:
    s = RecomputeShare(window=4)
    assert not s.measured and s.value == 0.0
    for cached in (1000, 1000, 0, 0):  # two hits, two misses of a 1,000-token prefix
        s.usage(1000, cached)
    assert s.measured and s.value == pytest.approx(0.5)
    s.usage(1000, 0)  # past the window: weight 1/4
    assert s.value == pytest.approx(0.5 + 0.5 / 4)
    s.usage(1000, 1500)  # more cached than the prefix (a history): nothing recomputed
    assert s.value == pytest.approx(0.625 * 0.75)


def test_once_usage_measures_the_counters_are_not_asked() -> None:
    """Usage is exact; the counters' aggregate reads lower where requests find more than
    their prefix cached, so a gateway that gets usage goes by it alone."""
    s = RecomputeShare(window=64)
    s.counted("a", 0, 1.0, 0.5, 0.0)
    s.counted("a", 512, 2.0, 0.5, 0.0)
    s.counted("a", 0, 3.0, 2.5, 512.0)  # the counters: nothing recomputed
    assert s.measured and s.value == 0.0
    s.usage(512, 0)                     # usage: all of it recomputed
    s.counted("a", 512, 4.0, 3.5, 5_000.0)
    s.counted("a", 0, 5.0, 4.5, 9_000.0)
    assert s.value == 1.0


def test_a_scrape_settles_the_first_tokens_that_came_before_it() -> None:
    s = RecomputeShare(window=1_000_000)
    s.counted("a", 0, 1.0, 0.5, 10_000.0)  # the baseline scrape (hits before it: nobody's)
    s.counted("a", 512, 2.0, 0.5, 10_000.0)
    s.counted("a", 512, 3.0, 0.5, 10_000.0)
    assert not s.measured  # no scrape since these first tokens
    # a scrape at 3.5 s: both were scheduled by then; 256 of their 1,024 tokens hit
    s.counted("a", 512, 4.0, 3.5, 10_256.0)
    assert s.measured and s.value == pytest.approx(0.75, abs=1e-5)
    # the third settles at the next scrape, with what the counter gained since
    s.counted("a", 0, 5.0, 4.5, 10_768.0)
    assert s.value == pytest.approx(1 - 768 / 1536, abs=1e-5)


def test_hits_in_chunks_that_straddle_the_requests_even_out() -> None:
    """Every prefix is cached, but the scrapes see the hits a request late: the sums read
    about nothing recomputed where per-scrape ratios clamped to [0, 1] read half."""
    s = RecomputeShare(window=256)
    s.counted("a", 0, 0.0, 0.0, 0.0)
    hits = 0.0
    for i in range(1, 200):
        # the request at i is settled by the scrape at i + 0.5, which shows only the hits
        # of the requests before it on odd scrapes and all of them on even ones
        shown = hits if i % 2 else hits + 2 * 512
        s.counted("a", 512, float(i), i + 0.5, shown)
        if i % 2 == 0:
            hits += 2 * 512
    assert s.value < 0.05


def test_counters_need_a_baseline_per_endpoint_and_skip_a_restart() -> None:
    s = RecomputeShare(window=1_000_000)
    # each endpoint's first sight is its baseline: that request may have been scheduled
    # before the scrape, its hits in the baseline, so it is not counted
    s.counted("a", 512, 1.0, 0.9, 0.0)
    s.counted("b", 512, 1.0, 0.9, 5_000.0)
    assert not s.measured
    s.counted("a", 512, 2.0, 0.9, 0.0)      # a's next request, after its baseline scrape
    s.counted("b", 512, 2.0, 0.9, 5_000.0)
    s.counted("b", 0, 3.0, 2.5, 100.0)      # b restarted (its counter fell): no hits counted
    assert s.value == pytest.approx(1.0)    # b's request: 512 cacheable, nothing counted
    s.counted("a", 0, 3.0, 2.5, 512.0)      # a's request hit its whole prefix
    assert s.value == pytest.approx(0.5, abs=1e-5)


def test_servers_without_the_counter_give_nothing() -> None:
    s = RecomputeShare(window=64)
    for t in range(5):
        s.counted("x", 400, float(t), float(t), None)
    assert not s.measured


def test_a_removed_endpoint_loses_its_baseline() -> None:
    s = RecomputeShare(window=64)
    s.counted("a", 100, 1.0, 0.5, 1_000.0)
    s.forget("a")
    s.counted("a", 0, 2.0, 1.5, 1_000.0)  # a baseline again: the request before it is gone
    assert not s.measured
