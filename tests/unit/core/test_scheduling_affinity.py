"""End to end through the default (llm-d) scheduler, with load feedback but no sockets:
requests sharing a long prefix land on one endpoint, distinct prefixes spread out."""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import replace

from inferoute.configfiles import resolve_config
from inferoute.core.scheduling.scheduler import Scheduler

#: fewer groups than endpoints, so a rotation would split every group
GROUPS = 6


def text(rng: random.Random, tokens: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(tokens * 4))


def run(sched, make_ep, make_req):
    rng = random.Random(3)
    eps = [make_ep(i, kv_usage=0.3) for i in range(8)]
    systems = [text(rng, 2000) for _ in range(GROUPS)]
    running: deque = deque()
    landed: dict[int, list[str]] = {g: [] for g in range(GROUPS)}
    step = 0
    for _round in range(5):
        for g in range(GROUPS):
            req = make_req(systems[g] + text(rng, 60))
            target = sched.schedule(req, eps, now=float(step)).target
            landed[g].append(target.name)
            # load feedback as a scrape would show it: queued work on the chosen endpoint
            target.metrics = replace(target.metrics, waiting=target.metrics.waiting + 1)
            running.append(target)
            if len(running) > 6:  # requests finish after a while
                done = running.popleft()
                done.metrics = replace(done.metrics, waiting=done.metrics.waiting - 1)
            step += 1
    return landed


def test_shared_prefixes_stick_and_distinct_prefixes_spread(make_ep, make_req) -> None:
    sched = Scheduler(seed=3)
    landed = run(sched, make_ep, make_req)
    for g, names in landed.items():
        assert len(set(names)) == 1, f"group {g} split across {Counter(names)}"
    homes = {names[0] for names in landed.values()}
    assert len(homes) >= 5, f"{GROUPS} groups crowded onto {len(homes)} endpoints"
    stats = sched.plugins["prefix-cache-scorer"].stats()
    assert stats.lookups == 5 * GROUPS and stats.hit_ratio > 0.7


def test_round_robin_baseline_splits_groups(make_ep, make_req) -> None:
    landed = run(Scheduler(resolve_config("round-robin")), make_ep, make_req)
    assert all(len(set(names)) > 1 for names in landed.values())
