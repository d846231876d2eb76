"""lora-affinity-scorer."""

from __future__ import annotations

from inferoute.core.plugins import lora_affinity_scorer
from inferoute.core.scheduling.registry import create_plugin


def test_lora_affinity_levels(make_ep, make_req, ctx) -> None:
    s = create_plugin("lora-affinity-scorer", "lora", None)
    active = make_ep(0, running=1, running_loras=("sql",), max_lora=2)
    free_slot = make_ep(1, running=1, running_loras=("chat",), max_lora=2)
    waiting = make_ep(2, running=2, waiting=1, running_loras=("a", "b"),
                      waiting_loras=("sql",), max_lora=2)
    full = make_ep(3, running=2, running_loras=("a", "b"), max_lora=2)
    no_info = make_ep(4)
    eps = [active, free_slot, waiting, full, no_info]
    assert list(s.score(ctx, make_req(lora="sql"), eps)) == [1.0, 0.8, 0.6, 0.0, 0.0]
    # requests for the base model are not biased
    assert list(s.score(ctx, make_req(), eps)) == [1.0] * 5


def test_waiting_adapters_take_slots(make_ep, make_req, ctx) -> None:
    s = create_plugin("lora-affinity-scorer", "lora", None)
    ep = make_ep(0, running=1, waiting=1, running_loras=("a",), waiting_loras=("b",), max_lora=2)
    assert list(s.score(ctx, make_req(lora="c"), [ep])) == [0.0]
    assert list(s.score(ctx, make_req(lora="b"), [ep])) == [0.6]


def test_an_idle_replicas_leftover_adapter_list_is_not_running(make_ep, make_req, ctx) -> None:
    """vLLM keeps listing the adapter of a finished request until the replica's next step; the
    page's own request counts show it idle, so the replica really running it wins."""
    s = create_plugin("lora-affinity-scorer", "lora", None)
    idle = make_ep(0, running=0, waiting=0, running_loras=("sql",), waiting_loras=("x",),
                   max_lora=2)
    busy = make_ep(1, running=1, running_loras=("sql",), max_lora=2)
    assert list(s.score(ctx, make_req(lora="sql"), [idle, busy])) == [0.8, 1.0]
    # the leftover lists take no slot either: another adapter loads without evicting
    assert list(s.score(ctx, make_req(lora="new"), [idle])) == [0.8]


def test_own_in_flight_requests_count_before_any_scrape(make_ep, make_req, ctx) -> None:
    s = create_plugin("lora-affinity-scorer", "lora", None)
    a, b = make_ep(0, max_lora=1), make_ep(1, max_lora=1)
    first, other = make_req(lora="sql"), make_req(lora="chat")
    s.on_served(first, a, 0.0)
    s.on_served(other, b, 0.0)
    # nothing scraped yet: the gateway's own knowledge, and the slot it takes
    assert list(s.score(ctx, make_req(lora="sql"), [a, b])) == [1.0, 0.0]
    # a fallback moves the request; its finish releases it
    s.on_served(first, b, 0.1)
    assert list(s.score(ctx, make_req(lora="sql"), [a, b])) == [0.8, 1.0]
    s.on_finished(first, b, 0.2, None)
    s.on_finished(other, b, 0.2, None)
    assert list(s.score(ctx, make_req(lora="sql"), [a, b])) == [0.8, 0.8]
    assert not s._counts and not s._flights


def test_bookkeeping_is_bounded(make_ep, make_req, ctx, monkeypatch) -> None:
    monkeypatch.setattr(lora_affinity_scorer, "MAX_TRACKED", 3)
    s = create_plugin("lora-affinity-scorer", "lora", None)
    ep = make_ep(0, max_lora=4)
    for _ in range(10):   # a shell that never reports the finish
        s.on_served(make_req(lora="sql"), ep, 0.0)
    assert len(s._flights) == 3 and s._counts == {(ep.name, "sql"): 3}
    s.on_endpoint_removed(ep)
    assert not s._counts and not s._flights
