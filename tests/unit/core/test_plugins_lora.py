"""lora-affinity-scorer."""

from __future__ import annotations

from inferoute.core.scheduling.registry import create_plugin


def test_lora_affinity_levels(make_ep, make_req, ctx) -> None:
    s = create_plugin("lora-affinity-scorer", "lora", None)
    active = make_ep(0, running_loras=("sql",), max_lora=2)
    free_slot = make_ep(1, running_loras=("chat",), max_lora=2)
    waiting = make_ep(2, running_loras=("a", "b"), waiting_loras=("sql",), max_lora=2)
    full = make_ep(3, running_loras=("a", "b"), max_lora=2)
    no_info = make_ep(4)
    eps = [active, free_slot, waiting, full, no_info]
    assert list(s.score(ctx, make_req(lora="sql"), eps)) == [1.0, 0.8, 0.6, 0.0, 0.0]
    # requests for the base model are not biased
    assert list(s.score(ctx, make_req(), eps)) == [1.0] * 5


def test_waiting_adapters_take_slots(make_ep, make_req, ctx) -> None:
    s = create_plugin("lora-affinity-scorer", "lora", None)
    ep = make_ep(0, running_loras=("a",), waiting_loras=("b",), max_lora=2)
    assert list(s.score(ctx, make_req(lora="c"), [ep])) == [0.0]
    assert list(s.score(ctx, make_req(lora="b"), [ep])) == [0.6]
