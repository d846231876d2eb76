"""The simulated vLLM engine: scheduling, prefix caching, preemption, budgets, LoRA, determinism."""

import pytest

from inferoute.core.errors import BadRequest, ConfigError
from inferoute.sim.blocks import BlockRemoved, BlockStored
from inferoute.sim.engine import Engine, SimRequest
from inferoute.sim.profile import load_profile
from inferoute.sim.tokenizer import encode

TINY = load_profile("tiny")   # 64 blocks of 16, 8 seqs, 128 tokens per step, 2 LoRA slots


def words(tag: str, n: int) -> list[int]:
    return encode(" ".join(f"{tag}{i}" for i in range(n)))


def run(engine: Engine, now: float = 0.0, limit: int = 10_000):
    """Step until idle; returns (outputs with their delivery time, steps, end time)."""
    outs, steps = [], []
    while engine.has_work():
        res = engine.step(now)
        assert res.duration > 0 and res.outputs is not None
        steps.append(res)
        now += res.duration
        outs += [(now, o) for o in res.outputs]
        assert len(steps) < limit
    return outs, steps, now


def req(rid, prompt, max_tokens=4, **kw):
    return SimRequest(rid, prompt, max_tokens, ignore_eos=kw.pop("ignore_eos", True), **kw)


def test_single_request_prefill_then_one_token_per_step():
    e = Engine(TINY)
    e.add_request(req("a", words("p", 100), 5), 0.0)
    outs, steps, _ = run(e)
    assert [o.new_tokens for _, o in outs] == [1] * 5
    assert outs[0][1].first and not any(o.first for _, o in outs[1:])
    assert outs[-1][1].finished and outs[-1][1].finish_reason == "length"
    assert len(steps) == 5                        # 100 prompt tokens fit one 128-token step
    s = e.stats()
    assert s.request_success == {"length": 5 // 5} and s.running == 0 and s.kv_usage == 0.0
    assert s.generation_tokens == 5 and s.prompt_tokens == 100


def test_cached_prefix_cuts_prefill_work_and_time():
    cold = Engine(TINY)
    cold.add_request(req("x", words("s", 96) + words("q", 20), 1), 0.0)
    cold_out, cold_steps, _ = run(cold)

    warm = Engine(TINY)
    warm.add_request(req("a", words("s", 96) + words("other", 20), 1), 0.0)
    run(warm)
    warm.add_request(req("x", words("s", 96) + words("q", 20), 1), 10.0)
    warm_out, warm_steps, _ = run(warm, 10.0)

    assert cold_out[0][1].cached_tokens == 0
    assert warm_out[0][1].cached_tokens == 96     # six full blocks of the shared prefix
    assert warm_out[0][1].prompt_tokens == 116
    assert warm_steps[0].duration < cold_steps[0].duration
    s = warm.stats()
    assert s.prefix_cache_hits == 96 and s.prefix_cache_queries == 232


def test_at_least_one_token_is_computed_even_on_a_full_hit():
    e = Engine(TINY)
    e.add_request(req("a", words("s", 64), 1), 0.0)
    run(e)
    e.add_request(req("b", words("s", 64), 1), 1.0)
    outs, _, _ = run(e, 1.0)
    assert outs[0][1].cached_tokens == 48         # the last block is recomputed


def test_chunked_prefill_across_steps_under_the_token_budget():
    e = Engine(TINY)
    e.add_request(req("a", words("p", 300), 2), 0.0)
    _, steps, _ = run(e)
    # 300 tokens at 128 per step: two chunks without output, the third samples the first token
    assert [len(s.outputs) for s in steps] == [0, 0, 1, 1]
    assert steps[0].duration > steps[3].duration  # a full chunk costs more than one decode


def test_budget_shared_running_first_then_waiting():
    e = Engine(TINY)
    e.add_request(req("a", words("a", 100), 3), 0.0)
    e.step(0.0)                                  # a: 100 prompt tokens
    e.add_request(req("b", words("b", 200), 3), 0.1)
    e.step(0.1)                                  # a decodes 1, b gets the other 127
    seqs = {s.rid: s for s in e._running}
    assert seqs["a"].computed == 101 and seqs["b"].computed == 127


def test_max_num_seqs_limits_the_running_batch():
    e = Engine(TINY.replace(max_num_seqs=3))
    for i in range(5):
        e.add_request(req(f"r{i}", words(f"r{i}-", 10), 3), 0.0)
    e.step(0.0)
    s = e.stats()
    assert s.running == 3 and s.waiting == 2
    outs, _, _ = run(e, 1.0)
    assert sum(o.finished for _, o in outs) == 5


def test_a_step_names_the_requests_it_schedules_for_the_first_time():
    # vLLM's scheduled_ts: the end of a request's queue time, once (not again after preemption)
    e = Engine(TINY.replace(max_num_seqs=2))
    for rid in ("a", "b", "c"):
        e.add_request(req(rid, words(rid, 10), 2), 0.0)
    assert e.step(0.0).first_scheduled == ["a", "b"]   # c waits for a seat
    assert e.step(0.1).first_scheduled == []
    assert e.step(0.2).first_scheduled == ["c"]         # a and b finished
    pre = Engine(TINY.replace(num_blocks=8, max_model_len=128))
    pre.add_request(req("early", words("e", 48), 40), 0.0)
    pre.add_request(req("late", words("l", 48), 40), 0.0)
    _, steps, _ = run(pre)
    assert pre.stats().preemptions >= 1
    assert sorted(rid for st in steps for rid in st.first_scheduled) == ["early", "late"]


def test_preemption_when_blocks_run_out_recomputes_the_latest_request():
    # 8 blocks of 16 = 128 tokens; two requests of 48 prompt tokens each growing by 40 tokens
    e = Engine(TINY.replace(num_blocks=8, max_model_len=128))
    e.add_request(req("early", words("e", 48), 40), 0.0)
    e.add_request(req("late", words("l", 48), 40), 0.0)
    outs, _, _ = run(e)
    s = e.stats()
    assert s.preemptions >= 1
    done = [o.request_id for _, o in outs if o.finished]
    assert done[0] == "early" and sorted(done) == ["early", "late"]
    late_tokens = [o for _, o in outs if o.request_id == "late"]
    assert len(late_tokens) == 40 and sum(o.first for o in late_tokens) == 1
    assert s.kv_usage == 0.0 and s.running == 0 and s.waiting == 0


def test_waiting_request_waits_when_kv_is_full_and_runs_after():
    e = Engine(TINY.replace(num_blocks=8, max_model_len=128))
    e.add_request(req("big", words("b", 100), 20), 0.0)   # 7 blocks, 8 with its outputs
    e.step(0.0)
    e.add_request(req("next", words("n", 40), 2), 0.1)
    e.step(0.1)
    assert e.stats().waiting == 1
    outs, _, _ = run(e, 0.2)
    assert {o.request_id for _, o in outs if o.finished} == {"big", "next"}


def test_lora_requests_wait_for_a_slot_then_load():
    e = Engine(TINY)                               # max_loras = 2
    for name in ("l1", "l2", "l3"):
        e.add_request(req(f"{name}-r", words(name, 20), 10, lora=name), 0.0)
    e.add_request(req("base", words("base", 20), 10), 0.0)
    e.step(0.0)
    s = e.stats()
    # l3 waits for a slot, the base-model request behind it is not blocked
    assert s.running_loras == ["l1", "l2"] and s.waiting_loras == ["l3"]
    assert s.running == 3 and s.waiting == 1 and s.max_lora == 2
    outs, _, _ = run(e, 1.0)
    assert {o.request_id for _, o in outs if o.finished} == {"l1-r", "l2-r", "l3-r", "base"}
    assert "l3" in e.loaded_loras and len(e.loaded_loras) == 2
    assert set(e.loras) == {"l1", "l2", "l3"}


def test_lora_blocks_do_not_share_cache_with_the_base_model():
    e = Engine(TINY)
    e.add_request(req("base", words("s", 64), 1), 0.0)
    run(e)
    e.add_request(req("ad", words("s", 64), 1, lora="l1"), 1.0)
    outs, _, _ = run(e, 1.0)
    assert outs[0][1].cached_tokens == 0


def test_lora_rejected_without_slots():
    e = Engine(TINY.replace(max_loras=0))
    with pytest.raises(BadRequest):
        e.add_request(req("x", words("a", 4), 1, lora="l1"), 0.0)


def test_bad_requests_are_rejected():
    e = Engine(TINY)
    with pytest.raises(BadRequest, match="maximum context length"):
        e.add_request(req("long", words("a", 1000), 100), 0.0)
    with pytest.raises(BadRequest):
        e.add_request(req("empty", [], 1), 0.0)
    with pytest.raises(BadRequest):
        e.add_request(req("zero", words("a", 4), 0), 0.0)
    e.add_request(req("dup", words("a", 4), 1), 0.0)
    with pytest.raises(BadRequest):
        e.add_request(req("dup", words("a", 4), 1), 0.0)
    (only,) = e.step(0.0).outputs                  # the rejected ones left no trace
    assert only.request_id == "dup" and only.finished and not e.has_work()


def test_abort_frees_blocks_and_keeps_them_cached():
    e = Engine(TINY)
    e.add_request(req("a", words("s", 64), 50), 0.0)
    e.step(0.0)
    assert e.stats().kv_usage > 0
    e.abort("a", 0.5)
    e.abort("a", 0.5)                              # unknown now: ignored
    s = e.stats()
    assert s.kv_usage == 0.0 and not e.has_work() and s.request_success == {"abort": 1}
    e.add_request(req("b", words("s", 64), 1), 1.0)
    outs, _, _ = run(e, 1.0)
    assert outs[0][1].cached_tokens == 48
    e.add_request(req("w", words("w", 8), 1), 2.0)
    e.abort("w", 2.0)                              # abort while waiting
    assert not e.has_work()


def test_natural_length_is_seeded_and_bounded():
    def lengths(seed):
        e = Engine(TINY, seed=seed)
        for i in range(8):
            e.add_request(SimRequest(f"r{i}", words("p", 8), 50), 0.0)
        outs, _, _ = run(e)
        return {o.request_id: (o.finish_reason, n) for n, (_, o) in
                ((sum(1 for _, x in outs if x.request_id == o.request_id), (t, o))
                 for t, o in outs if o.finished)}
    a, b, c = lengths(1), lengths(1), lengths(2)
    assert a == b and a != c
    assert all(1 <= n <= 50 for _, n in a.values())
    assert any(reason == "stop" for reason, _ in a.values())


def test_same_seed_same_run_with_noise():
    noisy = TINY.replace(noise=0.1)

    def trace(seed):
        e = Engine(noisy, seed=seed)
        for i in range(6):
            e.add_request(SimRequest(f"r{i}", words(f"x{i % 2}", 40 + i), 30), 0.0)
        outs, steps, _ = run(e)
        return [round(s.duration, 12) for s in steps], [(o.request_id, o.finished) for _, o in outs]
    assert trace(3) == trace(3)
    assert trace(3)[0] != trace(4)[0]


def test_kv_events_follow_the_cache():
    e = Engine(TINY.replace(num_blocks=6, max_model_len=96), kv_events=True)
    e.add_request(req("a", words("a", 40), 9), 0.0)     # 2 full prompt blocks, then a 3rd
    run(e)
    ev = e.drain_kv_events()
    stored = [x for x in ev if isinstance(x, BlockStored)]
    assert [len(x.block_hashes) for x in stored] == [2, 1]
    assert stored[0].parent_block_hash is None
    assert stored[1].parent_block_hash == stored[0].block_hashes[-1]
    assert stored[0].token_ids == words("a", 32) and stored[0].block_size == 16
    assert not any(isinstance(x, BlockRemoved) for x in ev)
    # a different prompt needing all 6 blocks evicts a's blocks, tail first
    e.add_request(req("b", words("b", 90), 1), 1.0)
    run(e, 1.0)
    ev = e.drain_kv_events()
    removed = [h for x in ev if isinstance(x, BlockRemoved) for h in x.block_hashes]
    assert removed == [stored[1].block_hashes[0], stored[0].block_hashes[1],
                       stored[0].block_hashes[0]]
    assert isinstance(ev[-1], BlockStored)


def test_output_tokens_are_cached_for_the_next_turn():
    from inferoute.sim.tokenizer import output_words
    e = Engine(TINY, seed=5)
    prompt = words("turn", 20)
    e.add_request(req("t1", prompt, 30), 0.0)
    run(e)
    reply = encode(" ".join(output_words(5, "t1", 30)))
    e.add_request(req("t2", prompt + reply + words("more", 10), 1), 1.0)
    outs, _, _ = run(e, 1.0)
    # the 20 + 29 computed tokens of turn 1 form three full blocks
    assert outs[0][1].cached_tokens == 48


def test_lora_register_unregister_and_idle_slot_reuse():
    e = Engine(TINY)
    assert e.load_lora("a") == e.load_lora("a") != e.load_lora("b")
    assert e.loras == ["a", "b"] and e.loaded_loras == []
    for name in ("a", "b", "c"):                   # one at a time: idle slots get reused
        e.add_request(req(f"{name}-1", words(name, 8), 2, lora=name), 0.0)
        run(e)
    assert e.loaded_loras == ["b", "c"]           # a, least recently used and idle, unloaded
    assert e.unload_lora("c") is True and e.unload_lora("c") is False
    assert e.loras == ["a", "b"] and e.loaded_loras == ["b"]


def test_reset_prefix_cache_only_when_idle():
    e = Engine(TINY, kv_events=True)
    e.add_request(req("a", words("s", 64), 5), 0.0)
    e.step(0.0)
    assert e.reset_prefix_cache() is False
    run(e, 1.0)
    assert e.reset_prefix_cache() is True
    assert type(e.drain_kv_events()[-1]).__name__ == "AllBlocksCleared"
    e.add_request(req("b", words("s", 64), 1), 2.0)
    outs, _, _ = run(e, 2.0)
    assert outs[0][1].cached_tokens == 0


def test_a_scrape_lengthens_a_busy_engines_next_step_by_the_profiles_scrape_cost():
    """A vLLM-CPU replica renders /metrics on the engine's own core: a profile with
    `scrape_engine_ms` charges each scrape to the next step, and only while there is work."""
    plain, scraped = Engine(TINY), Engine(TINY.replace(scrape_engine_ms=4.0))
    for e in (plain, scraped):
        e.add_request(req("a", words("a", 40), max_tokens=8), 0.0)
        e.step(0.0)  # the prefill
    scraped.scraped()
    scraped.scraped()
    plain.scraped()  # costs nothing without a scrape cost
    first_plain, first_scraped = plain.step(1.0), scraped.step(1.0)
    assert first_scraped.duration == pytest.approx(first_plain.duration + 0.008)
    # charged once: the step after is the plain one again
    assert scraped.step(2.0).duration == pytest.approx(plain.step(2.0).duration)


def test_a_scrape_of_an_idle_engine_costs_nothing():
    idle, plain = Engine(TINY.replace(scrape_engine_ms=4.0)), Engine(TINY)
    idle.scraped()  # nothing to delay: dropped, not saved for the next request
    for e in (idle, plain):
        e.add_request(req("a", words("a", 40), max_tokens=2), 0.0)
    assert idle.step(0.0).duration == pytest.approx(plain.step(0.0).duration)


def test_a_negative_scrape_cost_is_refused():
    with pytest.raises(ConfigError, match="scrape_engine_ms"):
        TINY.replace(scrape_engine_ms=-1.0)


def test_a_front_end_beside_a_busy_engine_takes_turns_with_its_steps():
    """A vLLM-CPU replica's API server shares the worker's core: with `frontend_engine_share`,
    a request whose front end begins while the engine computes waits that share of it longer,
    and the engine's next step is as much later; beside an idle engine it costs nothing."""
    front = TINY.replace(frontend_fixed_ms=6.0)
    shared, plain = Engine(front.replace(frontend_engine_share=0.5)), Engine(front)
    assert shared.front_end(100) == pytest.approx(0.006)  # idle: the core is the front end's
    for e in (plain, shared):
        e.add_request(req("a", words("a", 40), max_tokens=8), 0.0)
        e.step(0.0)  # the prefill
    # a share of 0: the API server has cores of its own
    assert plain.front_end(100) == pytest.approx(0.006)
    assert shared.front_end(100) == pytest.approx(0.009)
    assert shared.step(1.0).duration == pytest.approx(plain.step(1.0).duration + 0.003)
    assert shared.step(2.0).duration == pytest.approx(plain.step(2.0).duration)  # charged once


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_front_end_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ConfigError, match="frontend_engine_share"):
        TINY.replace(frontend_engine_share=share)
