"""The virtual-time benchmark charges each simulated /metrics scrape to a busy engine's steps
when the profile says the server renders its page on the engine's own cores."""

from pathlib import Path

import yaml

from inferoute.bench.des import SimConfig, run_virtual
from inferoute.bench.load import LoadSpec, parse_stages
from inferoute.bench.workloads import random_prompts
import inferoute.sim


def _profile(tmp_path: Path, scrape_ms: float) -> str:
    tiny = Path(inferoute.sim.__file__).parent / "profiles" / "tiny.yaml"
    spec = yaml.safe_load(tiny.read_text())
    spec.update(name=f"tiny-scrape-{scrape_ms}", scrape_engine_ms=scrape_ms)
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _end(profile: str) -> float:
    """When the last of a few long decodes ended, scraped every 50 ms."""
    w = random_prompts(num_prompts=4, input_len=100, input_spread=0.0, output_len=200,
                       output_spread=0.0, seed=1)
    res = run_virtual(SimConfig(policy="round-robin", replicas=1, profile=profile, workload=w,
                                load=LoadSpec(parse_stages("c4:4"), seed=1), seed=1,
                                scrape_interval=0.05))
    recs = res.records[0]
    assert len(recs) == 4 and all(r.ok for r in recs)
    return max(r.end for r in recs if r.end is not None)


def test_scrapes_of_a_busy_engine_lengthen_the_run_by_their_cost(tmp_path: Path) -> None:
    plain, scraped = _end(_profile(tmp_path, 0.0)), _end(_profile(tmp_path, 5.0))
    busy_scrapes = plain / 0.05  # about: the engine is busy the whole run
    # each scrape while busy costs 5 ms of engine time (a 10% share at 20 scrapes a second)
    assert scraped - plain > 0.5 * busy_scrapes * 0.005
    assert scraped - plain < 1.5 * busy_scrapes * 0.005 / (1 - 0.1)
