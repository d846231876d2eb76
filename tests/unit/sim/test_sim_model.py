"""Tokenizer, profiles and the step-time model of the simulator."""

import pytest
import xxhash

from inferoute.core.errors import ConfigError
from inferoute.sim import tokenizer
from inferoute.sim.calibrate import calibration_report, seed_bandwidth_bound
from inferoute.sim.profile import load_profile, packaged_profiles
from inferoute.sim.timing import TimingModel


def test_tokenizer_one_token_per_word_with_stable_ids():
    text = "Hello  world\n\tagain " * 100
    ids = tokenizer.encode(text)
    assert len(ids) == tokenizer.count(text) == 300
    assert ids[0] == 1000 + xxhash.xxh32_intdigest(b"Hello") % (2**31 - 1 - 1000)
    assert tokenizer.encode(text) == ids and tokenizer.encode(text) is not ids
    assert all(1000 <= i < 2**31 - 1 for i in ids)
    assert tokenizer.encode("") == [] and tokenizer.count("   ") == 0


def test_output_words_are_deterministic_and_round_trip():
    a = tokenizer.output_words(7, "req-1", 50)
    assert a == tokenizer.output_words(7, "req-1", 50)
    assert a != tokenizer.output_words(8, "req-1", 50)
    assert a[:10] == tokenizer.output_words(7, "req-1", 10)
    seed = tokenizer.output_key_seed(7, "req-1")
    assert tokenizer.encode(" ".join(a)) == tokenizer.output_token_ids(seed, 0, 50)
    assert all(w.isalpha() for w in a)


def test_packaged_profiles_load_and_derive_kv_capacity():
    assert {"qwen3-32b-2xh100", "llama3-8b-h100", "tiny"} <= set(packaged_profiles())
    q = load_profile("qwen3-32b-2xh100")
    assert q.kv_bytes_per_token == 2 * 64 * 8 * 128 * 2
    assert q.num_blocks_derived and 15_000 < q.num_blocks < 23_000
    smaller = q.replace(gpu_memory_utilization=0.8)
    assert smaller.num_blocks < q.num_blocks
    assert q.replace(num_blocks=100).num_blocks == 100
    assert load_profile("tiny").num_blocks == 64


def test_bad_profiles_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nwarp_drive: 3\n")
    with pytest.raises(ConfigError, match="warp_drive"):
        load_profile(str(bad))
    bad.write_text("name: x\nmemory_efficiency: 2\n")
    with pytest.raises(ConfigError, match="memory_efficiency"):
        load_profile(str(bad))
    bad.write_text("name: x\nparams_billion: 300\ntensor_parallel: 1\n")
    with pytest.raises(ConfigError, match="no room"):
        load_profile(str(bad))
    with pytest.raises(ConfigError):
        load_profile("tiny", no_such_field=1)


def test_step_time_grows_with_work():
    t = TimingModel(load_profile("qwen3-32b-2xh100"))
    assert t.decode_seconds(1, 1000) < t.decode_seconds(1, 8000) < t.decode_seconds(32, 8000)
    assert t.decode_seconds(32, 8000) < t.decode_seconds(100, 8000)
    # a prefix-cache hit leaves fewer tokens to compute: much shorter
    assert t.prefill_seconds(7200, cached=6000) < 0.3 * t.prefill_seconds(7200)
    assert t.step_seconds(0, 0, 0, 0.0, 0) == 0.0


def test_tensor_parallel_adds_communication():
    p = load_profile("llama3-8b-h100")
    one = TimingModel(p)
    two = TimingModel(p.replace(tensor_parallel=2))
    assert one.sec_comm_fixed == 0 and two.sec_comm_fixed > 0
    assert two.decode_seconds(1, 1000) < one.decode_seconds(1, 1000)   # half the weights each


def test_calibration_report_is_near_the_design_roofline():
    rep = calibration_report(load_profile("qwen3-32b-2xh100"))
    by = {row["metric"]: row for row in rep["rows"]}
    # first-principles model vs design.md's roofline estimates: same ballpark, not fitted
    assert 0.7 < by["prefill tokens/s"]["model"] / 13_500 < 1.3
    assert 0.7 < by["decode step, batch 1, 8k context (ms)"]["model"] / 15 < 1.3
    assert 0.7 < by["decode step, batch 100, 8k context (ms)"]["model"] / 50 < 1.3
    assert 0.7 < by["KV capacity (tokens)"]["model"] / 270_000 < 1.3


def test_seed_bandwidth_bound_is_physical():
    # the least HBM efficiency that fits the seed's llm-d decode load into its mean ITL
    q = load_profile("qwen3-32b-2xh100")
    bound = seed_bandwidth_bound(q)
    assert 0.80 < bound < 0.87                      # just above the profile's 0.80
    assert seed_bandwidth_bound(q.replace(kv_dtype_bytes=1)) < 0.7 * bound   # fp8 KV: fewer bytes
    assert seed_bandwidth_bound(q.replace(step_overhead_ms=5.0)) > bound     # less time left
    rows = {r["metric"]: r for r in calibration_report(q)["rows"]}
    assert rows["HBM efficiency the seed implies (at least)"]["reference"] == bound
