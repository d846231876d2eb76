"""Model routes: split proportions, determinism, sticky hashing, body rewrite."""

from __future__ import annotations

import orjson
import pytest

from inferoute.core.admission import RouteSpec, RoutingRules, rewrite_model


def _rules(split: str = "hash", **kw) -> RoutingRules:
    return RoutingRules([RouteSpec.model_validate({
        "model": "chat", "split": split, **kw,
        "targets": [{"model": "base", "weight": 90}, {"model": "canary-lora", "weight": 10}]})])


@pytest.mark.parametrize("split", ["hash", "random"])
def test_split_proportions(split: str, req) -> None:
    rules = _rules(split, seed=7)
    n = 20_000
    canary = sum(rules.route(req(model="chat")).target_model == "canary-lora" for _ in range(n))
    assert abs(canary / n - 0.10) < 0.01


def test_hash_split_is_deterministic_per_request_id(req) -> None:
    a, b = _rules(), _rules()
    for i in range(200):
        ra, rb = req(model="chat", request_id=f"id-{i}"), req(model="chat", request_id=f"id-{i}")
        assert a.route(ra).target_model == b.route(rb).target_model


def test_random_split_is_reproducible_for_a_seed(req) -> None:
    picks = [[_r.route(req(model="chat")).target_model for _ in range(100)]
             for _r in (_rules("random", seed=3), _rules("random", seed=3))]
    assert picks[0] == picks[1]


def test_hash_header_makes_assignment_sticky(req) -> None:
    rules = _rules(hashHeader="X-User")
    targets = {rules.route(req(model="chat", headers={"x-user": "alice"})).target_model
               for _ in range(50)}
    assert len(targets) == 1


def test_choice_and_request_fields(req) -> None:
    rules = _rules()
    r = req(model="chat")
    choice = rules.route(r)
    assert choice.client_model == "chat" and r.target_model == choice.target_model
    assert choice.rewritten
    other = req(model="plain")
    assert not rules.route(other).rewritten and other.target_model == "plain"
    assert "chat" in rules and rules.targets() == {"base", "canary-lora"}


def test_zero_weight_target_never_chosen(req) -> None:
    rules = RoutingRules([RouteSpec.model_validate({"model": "x", "targets": [
        {"model": "a", "weight": 1}, {"model": "b", "weight": 0}]})])
    assert {rules.route(req(model="x")).target_model for _ in range(100)} == {"a"}


def test_bad_specs() -> None:
    with pytest.raises(ValueError):
        RouteSpec.model_validate({"model": "x", "targets": [{"model": "a", "weight": 0}]})
    with pytest.raises(ValueError):
        RouteSpec.model_validate({"model": "x", "targets": []})
    spec = RouteSpec.model_validate({"model": "x", "targets": [{"model": "a"}]})
    with pytest.raises(ValueError):
        RoutingRules([spec, spec])


def test_rewrite_model_keeps_other_fields() -> None:
    raw = b'{"model":"chat","messages":[{"role":"user","content":"h\\u00e9"}],"n":1}'
    out = orjson.loads(rewrite_model(raw, "base"))
    assert out == {"model": "base", "messages": [{"role": "user", "content": "h\u00e9"}], "n": 1}
    assert orjson.loads(rewrite_model({"model": "a"}, "b")) == {"model": "b"}
