"""The `inferoute` policy in front of two real vLLM replicas measures the recompute share of a
returning prompt family (the engines' 128-token blocks: only the prefix's whole blocks count),
for clients that stream and ask for no usage (the gateway asks for it on their behalf), and
does not hold requests while the family's prefix stays cached. These replicas report cached
tokens; the servers' hit counters, what measures it behind a default vLLM, are tested on the
simulator (tests/integration/gateway/test_gateway_kv_fit.py)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import openai
import pytest

from .conftest import BLOCK, MODEL, Engines, Gateway, gateway_for, late_scrapes_ok, pool, words

RATIO = f'inferoute_pool_prefix_recompute_ratio{{name="{MODEL}"}}'
HOLDING = f'inferoute_pool_kv_fit_holding{{name="{MODEL}"}}'


@pytest.fixture(scope="module")
def gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_for(tmp_path_factory.mktemp("kvfit"),
                     pool(engines, late_scrapes_ok("inferoute"))) as gw:
        yield gw


def _metrics(gw: Gateway) -> tuple[float | None, float | None]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        page = r.read().decode()

    def value(series: str) -> float | None:
        return next((float(ln.split()[-1]) for ln in page.splitlines()
                     if ln.startswith(series + " ")), None)

    return value(RATIO), value(HOLDING)


def test_the_engines_hit_counters_measure_a_cached_family(client: openai.OpenAI,
                                                          gateway: Gateway):
    system = words(20, 5 * BLOCK)  # a family's prefix of five whole 128-token blocks
    ratio = holding = None
    for i in range(200):  # until the rule has measured it
        stream = client.completions.create(model=MODEL, stream=True, max_tokens=2,
                                           prompt=system + " " + words(300 + i, 24))
        assert sum(1 for c in stream if c.choices) >= 1
        ratio, holding = _metrics(gateway)
        if ratio is not None and i >= 8:
            break
    # every return found the prefix's five blocks cached: nothing recomputed, nothing held
    assert ratio is not None and ratio < 0.1 and holding == 0, (i, ratio, holding)
