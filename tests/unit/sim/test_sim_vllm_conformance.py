"""The engine against facts of vLLM V1's scheduler and memory planning (vllm/v1/core/sched/
scheduler.py, kv_cache_manager.py, worker memory profiling), checked on small engines."""

from inferoute.sim.engine import Engine, SimRequest
from inferoute.sim.profile import GIB, load_profile
from inferoute.sim.tokenizer import encode

TINY = load_profile("tiny")   # 64 blocks of 16, 8 seqs, 128 tokens per step


def words(tag: str, n: int) -> list[int]:
    return encode(" ".join(f"{tag}{i}" for i in range(n)))


def req(rid: str, prompt: list[int], max_tokens: int) -> SimRequest:
    return SimRequest(rid, prompt, max_tokens, ignore_eos=True)


def test_kv_capacity_is_the_utilization_share_of_total_memory_minus_weights():
    # vLLM sizes the KV cache from gpu_memory_utilization x TOTAL memory minus the weights and
    # the profiled peak; 5 more points of utilization on 2 x 79.2 GiB buy exactly that memory
    # in 4 MiB blocks (16 tokens x 256 KiB of K and V for Qwen3-32B)
    q = load_profile("qwen3-32b-2xh100")
    assert q.kv_bytes_per_token * q.block_size == 4 * 1024**2
    low, high = q.replace(gpu_memory_utilization=0.90), q.replace(gpu_memory_utilization=0.95)
    extra = 2 * 0.05 * q.gpu_memory_gib * GIB / (4 * 1024**2)
    assert abs(high.num_blocks - low.num_blocks - extra) <= 1
    # the weights come out of the budget: 32.8 B bf16 parameters over 2 GPUs
    lighter = q.replace(params_billion=q.params_billion - 2.0)
    assert abs(lighter.num_blocks - high.num_blocks - 2e9 * 2 / (4 * 1024**2)) <= 1


def test_admission_checks_only_the_first_chunk_then_the_newcomer_is_preempted():
    # vLLM V1 admits a waiting request when the blocks of its first (budget-sized) chunk are
    # free; nothing is reserved for the rest of its prompt or its output. When the next chunk
    # cannot get blocks, the newest running request is the one preempted.
    e = Engine(TINY.replace(num_blocks=16, max_model_len=256))
    e.add_request(req("a", words("a", 100), 60), 0.0)          # 7 blocks, growing to 10
    t = e.step(0.0).duration
    e.add_request(req("b", words("b", 160), 4), t)              # 10 blocks; 9 are free
    e.step(t)                                                   # a decodes, b's 127-token chunk
    s = e.stats()
    assert s.running == 2 and s.waiting == 0                    # admitted on 8 blocks
    assert s.kv_usage == 15 / 16
    e.step(t + 1.0)                                             # b needs 2 more blocks: 1 free
    s = e.stats()
    assert s.preemptions == 1 and s.running == 1 and s.waiting == 1


def test_preempted_request_goes_first_and_recomputes_from_its_own_cached_blocks():
    # recompute preemption frees the victim's blocks (they stay cached, tail first in the free
    # queue) and puts it at the FRONT of the waiting queue; no waiting request is admitted in
    # the step that preempted; the victim resumes no later than a request that arrived while it
    # waited, and its prompt is a prefix-cache hit rather than a full recompute
    e = Engine(TINY.replace(num_blocks=10, max_model_len=160))
    e.add_request(req("old", words("o", 64), 60), 0.0)          # 4 blocks, grows to 8
    e.add_request(req("new", words("n", 64), 60), 0.0)          # 4 blocks, grows to 8
    now, preempted_at = 0.0, None
    while preempted_at is None:
        now += e.step(now).duration
        if e.stats().preemptions:
            preempted_at = now
    e.add_request(req("third", words("t", 16), 2), now)          # arrives while "new" waits
    queries, hits = e.stats().prefix_cache_queries, e.stats().prefix_cache_hits
    first: dict[str, float] = {}
    while e.has_work():
        out = e.step(now)
        now += out.duration
        for o in out.outputs:
            first.setdefault(o.request_id, now)
    assert first["new"] <= first["third"]          # the victim resumed no later than "third"
    s = e.stats()
    # "old" kept growing into the victim's freed blocks, tail first (vLLM frees a request's
    # blocks in reverse order), so the head of its prompt was still cached when it came back
    assert 16 <= s.prefix_cache_hits - hits < 64 and s.prefix_cache_queries > queries
    assert s.evictions > 0
