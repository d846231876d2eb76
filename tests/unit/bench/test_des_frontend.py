"""The virtual-time benchmark adds the serving front end of the profile (request handling plus
prompt tokenization) between a request's send and its arrival at the engine."""

from pathlib import Path

import yaml

from inferoute.bench.des import SimConfig, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import random_prompts
from inferoute.sim.profile import load_profile
import inferoute.sim


def _profile(tmp_path: Path, fixed_ms: float, us_per_token: float, share: float = 0.0) -> str:
    tiny = Path(inferoute.sim.__file__).parent / "profiles" / "tiny.yaml"
    spec = yaml.safe_load(tiny.read_text())
    spec.update(name=f"tiny-fe-{fixed_ms}-{us_per_token}-{share}", frontend_fixed_ms=fixed_ms,
                tokenize_us_per_token=us_per_token, frontend_engine_share=share)
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _ttfts(profile: str, stages: str = "c1:3", output_len: int = 5,
           output_spread: float = 0.0) -> list[float]:
    w = random_prompts(num_prompts=3, input_len=500, input_spread=0.0, output_len=output_len,
                       output_spread=output_spread, seed=1)
    res = run_virtual(SimConfig(policy="round-robin", replicas=1, profile=profile, workload=w,
                                load=LoadSpec(parse_stages(stages), seed=1), seed=1))
    recs = res.records[0]
    assert len(recs) == 3 and all(r.ok for r in recs)
    return [r.ttft for r in recs]  # type: ignore[misc]


def test_each_request_reaches_the_engine_after_the_front_end(tmp_path: Path) -> None:
    plain = _ttfts(_profile(tmp_path, 0.0, 0.0))
    slow = _profile(tmp_path, 40.0, 100.0)
    delay = load_profile(slow).frontend_delay(500)
    assert abs(delay - (0.040 + 500 * 100e-6)) < 1e-12
    # one request at a time on an idle engine: the TTFT grows by exactly the front end
    for a, b in zip(plain, _ttfts(slow)):
        assert abs(b - a - delay) < 1e-9


def test_packaged_gpu_profiles_model_a_front_end() -> None:
    for name in ("qwen3-32b-2xh100", "llama3-8b-h100"):
        p = load_profile(name)
        assert 0.005 < p.frontend_delay(7576) < 0.03  # a few ms + ~1 us per prompt token
    assert load_profile("tiny").frontend_delay(10_000) == 0.0  # the test fleet stays fast


def test_a_front_end_sharing_the_engines_core_waits_only_beside_a_busy_engine(
        tmp_path: Path) -> None:
    """`frontend_engine_share`: one request at a time finds the engine idle and pays nothing
    more; two at a time, the third is sent while the other still decodes and waits its whole
    front end again (share 1); the first two were sent to an idle engine."""
    plain, shared = _profile(tmp_path, 5.0, 0.0), _profile(tmp_path, 5.0, 0.0, share=1.0)
    assert _ttfts(shared) == _ttfts(plain)
    alone = _ttfts(plain, "c2:3", output_len=20, output_spread=0.5)
    beside = _ttfts(shared, "c2:3", output_len=20, output_spread=0.5)
    assert beside[:2] == alone[:2]
    assert abs(beside[2] - alone[2] - 0.005) < 1e-9
