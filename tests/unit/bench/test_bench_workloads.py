"""Workload generators: exact token counts, sharing structure, determinism; load schedules."""

import pytest

from inferoute.bench.load import SEED_STAGES, LoadSpec, parse_stages
from inferoute.bench.workloads import (
    make_workload,
    mixed,
    multi_turn_chat,
    parse_params,
    random_prompts,
    shared_prefix,
)


def test_shared_prefix_counts_and_sharing() -> None:
    w = shared_prefix(num_groups=4, num_prompts_per_group=3, system_prompt_len=50,
                      question_len=10, output_len=7, seed=1)
    assert len(w) == 12
    for it in w.items:
        assert len(it.prompt.split()) == it.prompt_tokens == 60
        assert it.max_tokens == 7
    by_group: dict[str, set[str]] = {}
    for it in w.items:
        by_group.setdefault(it.group, set()).add(" ".join(it.prompt.split()[:50]))
    assert len(by_group) == 4 and all(len(s) == 1 for s in by_group.values())
    prefixes = {next(iter(s)) for s in by_group.values()}
    assert len(prefixes) == 4
    assert len({it.prompt for it in w.items}) == 12


def test_shared_prefix_is_deterministic_by_seed() -> None:
    a = shared_prefix(num_groups=3, num_prompts_per_group=2, system_prompt_len=20,
                      question_len=5, seed=7)
    b = shared_prefix(num_groups=3, num_prompts_per_group=2, system_prompt_len=20,
                      question_len=5, seed=7)
    c = shared_prefix(num_groups=3, num_prompts_per_group=2, system_prompt_len=20,
                      question_len=5, seed=8)
    assert [i.prompt for i in a.items] == [i.prompt for i in b.items]
    assert [i.prompt for i in a.items] != [i.prompt for i in c.items]


def test_shared_prefix_multi_turn_accumulates() -> None:
    w = shared_prefix(num_groups=2, num_prompts_per_group=3, system_prompt_len=10,
                      question_len=4, multi_turn=True)
    g0 = [i for i in w.items if i.group == "g0"]
    assert [i.prompt_tokens for i in g0] == [14, 18, 22]
    assert g0[1].prompt.startswith(g0[0].prompt) and g0[2].prompt.startswith(g0[1].prompt)


def test_multi_turn_chat_grows_and_interleaves() -> None:
    w = multi_turn_chat(num_conversations=3, turns=4, system_prompt_len=20, user_len=5,
                        reply_len=6, output_len=6)
    assert len(w) == 12
    assert [i.session for i in w.items[:3]] == ["c0", "c1", "c2"]
    c1 = [i for i in w.items if i.session == "c1"]
    assert [i.prompt_tokens for i in c1] == [25, 36, 47, 58]
    for a, b in zip(c1, c1[1:]):
        assert b.prompt.startswith(a.prompt)
    assert all(len(i.prompt.split()) == i.prompt_tokens for i in w.items)


def test_random_and_mixed() -> None:
    r = random_prompts(num_prompts=50, input_len=100, output_len=20)
    assert all(50 <= i.prompt_tokens <= 150 and len(i.prompt.split()) == i.prompt_tokens
               for i in r.items)
    assert len({i.prompt.split()[0:8].__str__() for i in r.items}) == 50
    m = mixed(num_prompts=200, document_len=300, system_prompt_len=40, short_len=20,
              question_len=20)
    longs = [i for i in m.items if i.group.startswith("doc")]
    assert 20 < len(longs) < 120
    assert all(len(i.prompt.split()) == i.prompt_tokens for i in m.items)


def test_make_workload_errors() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope")
    with pytest.raises(ValueError, match="workload shared_prefix"):
        make_workload("shared_prefix", {"bogus": 1})
    assert parse_params(["num_groups=3", "multi_turn=true", "x=0.5"]) == {
        "num_groups": 3, "multi_turn": True, "x": 0.5}


def test_large_shared_prefix_is_fast_enough_and_exact() -> None:
    w = shared_prefix(seed=3)
    assert len(w) == 750
    assert w.items[0].prompt_tokens == 7200 and len(w.items[0].prompt.split()) == 7200


def test_stages_and_arrivals() -> None:
    seed = parse_stages("seed")
    assert len(seed) == 17 and seed[9].rate == 40 and seed[9].count == 1520
    assert sum(s.count for s in seed) == sum(int(s["rate"] * s["duration"]) for s in SEED_STAGES)
    st = parse_stages("5:10,c4:20")
    assert st[0].count == 50 and st[1].concurrency == 4 and st[1].count == 20
    assert parse_stages("[{rate: 2, duration: 3}]")[0].count == 6
    spec = LoadSpec(stages=st[:1], seed=1)
    a = spec.arrivals(0)
    assert len(a) == 50 and a[0] == 0.0 and a == sorted(a)
    assert a == LoadSpec(stages=st[:1], seed=1).arrivals(0)
    assert a != LoadSpec(stages=st[:1], seed=2).arrivals(0)
    const = LoadSpec(stages=st[:1], kind="constant").arrivals(0)
    assert const[1] == pytest.approx(0.2)
    for bad in ("0:10", "x:y", "[{rate: 1}]", "[{rate: 1, duration: 2, concurrency: 3}]"):
        with pytest.raises(ValueError):
            parse_stages(bad)
