"""`inferoute sim calibrate --from URL` end to end against a live `inferoute sim` (the real-engine
tier runs it against vLLM): it measures, fits and writes a profile the simulator loads, with the
server's block size, KV blocks and context length."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from inferoute.sim.profile import load_profile

from .conftest import start_sim


def _calibrate(replicas: int, lengths: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`sim calibrate` with one `--from` per replica of a live tiny `inferoute sim`."""
    sim = start_sim("--profile", "tiny", replicas=replicas)
    sources = [a for i in range(replicas) for a in ("--from", sim.url(i))]
    try:
        return subprocess.run(
            [sys.executable, "-m", "inferoute", "sim", "calibrate", *sources,
             "--lengths", lengths, "--batches", "1,2", "--repeats", "1",
             "--decode-tokens", "12", "--max-num-batched-tokens", "128", "--max-num-seqs", "8",
             "--profile", "tiny", "-o", str(out)], capture_output=True, text=True, timeout=120)
    finally:
        sim.stop()


def test_calibrate_from_a_live_server_writes_a_loadable_profile(tmp_path: Path):
    out = tmp_path / "fitted.yaml"
    r = _calibrate(1, "16,64,200", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    # every measured point is printed beside the fitted profile's prediction; the batch of two
    # long prompts would not fit the 64 blocks of 16 tokens (80% of them) and is skipped.
    # Three cold prompts, three prefix hits (whole blocks cached), one hit beside decodes
    assert r.stdout.count("TTFT, ") == 7 and r.stdout.count("decode step, batch") == 3
    hits = [line for line in r.stdout.splitlines() if "TTFT, " in line and " cached + " in line]
    assert len(hits) == 4 and sum("beside 2 decoding" in line for line in hits) == 1
    assert "TTFT, 208 cached + " in r.stdout  # a quarter of the 807-token limit, in blocks
    p = load_profile(str(out))
    tiny = load_profile("tiny")
    assert (p.block_size, p.num_blocks, p.max_model_len) == (tiny.block_size, tiny.num_blocks,
                                                             tiny.max_model_len)
    assert p.max_num_batched_tokens == 128 and p.model == "sim-model"
    assert p.step_overhead_ms >= 0 and p.gpu_tflops > 0
    assert out.read_text().startswith("# Fitted by `inferoute sim calibrate --from")


def test_calibrate_from_every_replica_at_once_pools_their_points(tmp_path: Path):
    out = tmp_path / "fitted.yaml"
    r = _calibrate(2, "16,64", out)
    assert r.returncode == 0, r.stdout + r.stderr
    # each replica's two cold prompts, three hits, one busy hit and three decode points (two
    # contexts, batches 1 and 2 at the short one), all in one fit
    assert r.stdout.count("TTFT, ") == 12 and r.stdout.count("decode step, batch") == 6
    assert out.read_text().splitlines()[0].count("--from http://127.0.0.1:") == 2
    assert load_profile(str(out)).num_blocks == load_profile("tiny").num_blocks


def test_calibrate_from_nothing_listening_is_a_clean_error():
    from inferoute.procs import free_port

    r = subprocess.run([sys.executable, "-m", "inferoute", "sim", "calibrate", "--from",
                        f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "inferoute sim calibrate:" in r.stderr
    assert "Traceback" not in r.stderr
