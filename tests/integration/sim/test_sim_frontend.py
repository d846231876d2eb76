"""A live `inferoute sim` adds the profile's front end (a fitted profile's measured HTTP,
tokenizer and first-token path) before the engine sees a request, as the virtual-time benchmark
does."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import yaml

from inferoute.sim.profile import load_profile

from .conftest import start_sim


async def test_the_profiles_front_end_delays_the_first_token(tmp_path: Path):
    data = load_profile("tiny").to_dict()
    data.pop("num_blocks_derived")
    data.update(name="slow-front", frontend_fixed_ms=400.0, tokenize_us_per_token=1000.0)
    profile = tmp_path / "slow-front.yaml"
    profile.write_text(yaml.safe_dump(data))
    sim = start_sim("--profile", str(profile), replicas=1)
    try:
        body = {"model": "sim-model", "prompt": "one two three four", "max_tokens": 1}
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            async with s.post(sim.url(0) + "/v1/completions", json=body) as r:
                assert r.status == 200
                usage = (await r.json())["usage"]
            took = time.monotonic() - t0
        # 400 ms fixed + 1 ms per prompt token at least (the engine's own step is ~1 ms)
        assert took >= 0.4 + usage["prompt_tokens"] * 1e-3
    finally:
        assert sim.stop() == 0
