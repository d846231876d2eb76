"""label-selector-filter, decode-filter, prefill-filter."""

from __future__ import annotations

import pytest

from inferoute.core.errors import ConfigError
from inferoute.core.scheduling.registry import create_plugin


def names(eps):
    return [ep.name for ep in eps]


def test_match_labels_and_expressions(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, labels={"zone": "a", "gpu": "h100"}),
           make_ep(1, labels={"zone": "b", "gpu": "h100", "canary": "1"}),
           make_ep(2, labels={"zone": "c"})]
    f = create_plugin("label-selector-filter", "f", {"matchLabels": {"gpu": "h100"}})
    assert names(f.filter(ctx, make_req(), eps)) == names(eps[:2])
    f = create_plugin("label-selector-filter", "f", {"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a", "c"]},
        {"key": "canary", "operator": "DoesNotExist"}]})
    assert names(f.filter(ctx, make_req(), eps)) == names([eps[0], eps[2]])
    f = create_plugin("label-selector-filter", "f", {"matchExpressions": [
        {"key": "zone", "operator": "NotIn", "values": ["a"]},
        {"key": "gpu", "operator": "Exists"}]})
    assert names(f.filter(ctx, make_req(), eps)) == names([eps[1]])
    everything = create_plugin("label-selector-filter", "f", None)
    assert names(everything.filter(ctx, make_req(), eps)) == names(eps)


@pytest.mark.parametrize("expr, fragment", [
    ({"key": "k", "operator": "Exists", "values": ["x"]}, "takes no 'values'"),
    ({"key": "k", "operator": "Equals", "values": ["x"]}, "operator"),
    ({"operator": "Exists"}, "key"),
])
def test_bad_expressions(expr, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        create_plugin("label-selector-filter", "f", {"matchExpressions": [expr]})


def test_role_filters(make_ep, make_req, ctx) -> None:
    eps = [make_ep(0, role="prefill"), make_ep(1, role="decode"), make_ep(2, role="both")]
    decode = create_plugin("decode-filter", "d", None)
    prefill = create_plugin("prefill-filter", "p", None)
    assert names(decode.filter(ctx, make_req(), eps)) == names(eps[1:])
    assert names(prefill.filter(ctx, make_req(), eps)) == names([eps[0], eps[2]])
    with pytest.raises(ConfigError, match="Extra inputs"):
        create_plugin("decode-filter", "d", {"role": "x"})
