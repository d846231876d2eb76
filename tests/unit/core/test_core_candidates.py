"""The candidate rule: ready (healthy, scraped within the window), fresh preferred."""

from __future__ import annotations

from inferoute.core.candidates import CandidateRule
from inferoute.core.endpoint import EndpointMetrics


def test_ready_needs_health_and_a_recent_scrape(make_ep) -> None:
    rule = CandidateRule(ready_window=5.0, scrape_interval=0.05)
    ep = make_ep(0, scraped_at=100.0)
    assert rule.is_ready(ep, 105.0) and not rule.is_ready(ep, 105.1)
    ep.healthy = False
    assert not rule.is_ready(ep, 100.0)
    assert not rule.is_ready(make_ep(1, scraped_at=None), 100.0)  # never scraped


def test_fresh_endpoints_are_preferred_while_there_are_any(make_ep) -> None:
    rule = CandidateRule(ready_window=5.0, scrape_interval=0.05)
    a, b, c = (make_ep(i, scraped_at=100.0) for i in range(3))
    assert rule.candidates([a, b, c], 100.1, 0.2) == [a, b, c]
    a.metrics = EndpointMetrics(scraped_at=101.0)  # b and c froze
    assert rule.candidates([a, b, c], 101.0, 0.2) == [a]
    assert rule.candidates([a, b, c], 101.0, 0.2, prefer_fresh=False) == [a, b, c]
    assert rule.candidates([a, b, c], 102.0, 0.2) == [a, b, c]  # none fresh: all ready ones
    assert rule.fresh_window(0.2) == 0.2 and CandidateRule(1.0, 1.0).fresh_window(0.2) == 2.0


def test_without_scraping_health_alone_decides(make_ep) -> None:
    rule = CandidateRule()
    a, b = make_ep(0, scraped_at=None), make_ep(1, scraped_at=0.0)
    b.healthy = False
    assert rule.candidates([a, b], 1e9, 0.2) == [a]


def test_an_endpoint_seen_answering_stays_live_while_its_scrape_runs_late(make_ep) -> None:
    """A busy replica's /metrics can lag on a crowded host; the answer it just sent proves it
    alive for the fresh window, so the conversation's next turn may still go back to it."""
    rule = CandidateRule(ready_window=5.0, scrape_interval=0.05)
    a, b = make_ep(0, scraped_at=100.0), make_ep(1, scraped_at=100.5)
    assert rule.candidates([a, b], 100.5, 0.2) == [b]  # a's scrape is late
    a.answered_at = 100.4
    assert rule.candidates([a, b], 100.5, 0.2) == [a, b]
    assert rule.candidates([a, b], 100.65, 0.2) == [b]  # and so is its answer, by now
