"""pd-profile-handler through the scheduler: decode primary, prefill when worth it."""

from __future__ import annotations

import pytest

from inferoute.core.errors import ConfigError
from inferoute.core.scheduling.config import load_config_text
from inferoute.core.scheduling.scheduler import Scheduler

PD = """
plugins:
- type: pd-profile-handler
  parameters: {threshold: %d}
- type: prefill-filter
- type: decode-filter
- type: prefix-cache-scorer
- type: queue-scorer
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2},
            {pluginRef: queue-scorer}]
"""


def pd(threshold: int = 0) -> Scheduler:
    return Scheduler(load_config_text(PD % threshold), seed=1)


def test_decode_is_primary_and_prefill_runs(make_ep, make_req) -> None:
    p, d = make_ep(0, role="prefill"), make_ep(1, role="decode")
    res = pd().schedule(make_req("q" * 400), [p, d], 0.0)
    assert res.primary == "decode" and res.target is d
    assert res.profiles["prefill"].targets[0] is p


def test_threshold_skips_prefill_for_short_or_cached_prompts(make_ep, make_req) -> None:
    p, d = make_ep(0, role="prefill"), make_ep(1, role="decode")
    s = pd(threshold=100)
    short = s.schedule(make_req("s" * 200), [p, d], 0.0)  # 50 tokens uncached
    assert set(short.profiles) == {"decode"} and short.target is d
    text = "L" * 1200  # 300 tokens: long enough to disaggregate
    first = s.schedule(make_req(text), [p, d], 0.0)
    assert set(first.profiles) == {"decode", "prefill"}
    # now cached on the decode endpoint: only 48 uncached tokens are left
    again = s.schedule(make_req(text + "x" * 145), [p, d], 1.0)
    assert set(again.profiles) == {"decode"}


def test_no_prefill_endpoint_means_decode_only(make_ep, make_req) -> None:
    d1, d2 = make_ep(0, role="decode"), make_ep(1, role="decode")
    res = pd().schedule(make_req("w" * 400), [d1, d2], 0.0)
    assert set(res.profiles) == {"decode"} and res.target in (d1, d2)


def test_both_role_endpoints_serve_both_profiles(make_ep, make_req) -> None:
    ep = make_ep(0, role="both")
    res = pd().schedule(make_req("b" * 400), [ep], 0.0)
    assert res.target is ep and res.profiles["prefill"].targets[0] is ep


def test_profiles_must_differ() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        Scheduler(load_config_text((PD % 0).replace(
            "parameters: {threshold: 0}", "parameters: {prefillProfile: decode}")))
