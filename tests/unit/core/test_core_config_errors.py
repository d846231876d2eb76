"""The EndpointPickerConfig loader and Scheduler construction: every mistake gets a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferoute.core.errors import ConfigError
from inferoute.configfiles import load_config_file, packaged_policies, resolve_config
from inferoute.core.scheduling.config import load_config_text
from inferoute.core.scheduling.scheduler import Scheduler


def build(text: str) -> Scheduler:
    return Scheduler(load_config_text(text, "test.yaml"))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        build(text)
    return str(exc.value)


def test_unknown_plugin_type_lists_known_types() -> None:
    msg = error_of("""
plugins: [{type: prefix-cash-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix-cash-scorer}]}]
""")
    assert "unknown type 'prefix-cash-scorer'" in msg and "prefix-cache-scorer" in msg


@pytest.mark.parametrize("weight", ["-1", ".nan", ".inf"])
def test_bad_weight(weight) -> None:
    msg = error_of(f"""
plugins: [{{type: queue-scorer}}]
schedulingProfiles: [{{name: default, plugins: [{{pluginRef: queue-scorer, weight: {weight}}}]}}]
""")
    assert "test.yaml" in msg and "weight must be a finite number >= 0" in msg


def test_weight_that_is_not_a_number() -> None:
    msg = error_of("""
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer, weight: heavy}]}]
""")
    assert "weight" in msg


def test_weight_on_a_picker() -> None:
    msg = error_of("""
plugins: [{type: max-score-picker}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: max-score-picker, weight: 2}]}]
""")
    assert "weight given for 'max-score-picker', which is not a scorer" in msg


def test_missing_plugin_reference() -> None:
    msg = error_of("""
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: kv-cache-utilization-scorer}]}]
""")
    assert "references undefined plugin 'kv-cache-utilization-scorer'" in msg
    assert "defined: queue-scorer" in msg


def test_handler_referencing_missing_profile() -> None:
    msg = error_of("""
plugins: [{type: pd-profile-handler}, {type: decode-filter}, {type: queue-scorer}]
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer}]}
- {name: prefil, plugins: [{pluginRef: queue-scorer}]}
""")
    assert "'prefill' not configured" in msg and "decode, prefil" in msg


def test_duplicate_plugin_and_profile_names() -> None:
    assert "plugin name 'queue-scorer' is defined twice" in error_of("""
plugins: [{type: queue-scorer}, {type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
""")
    assert "scheduling profile 'a' is defined twice" in error_of("""
plugins: [{type: queue-scorer}]
schedulingProfiles:
- {name: a, plugins: [{pluginRef: queue-scorer}]}
- {name: a, plugins: [{pluginRef: queue-scorer}]}
""")


def test_two_pickers_in_one_profile() -> None:
    msg = error_of("""
plugins: [{type: max-score-picker}, {type: random-picker}]
schedulingProfiles:
- {name: default, plugins: [{pluginRef: max-score-picker}, {pluginRef: random-picker}]}
""")
    assert "two pickers" in msg and "'random-picker'" in msg


def test_several_profiles_need_a_handler() -> None:
    msg = error_of("""
plugins: [{type: queue-scorer}]
schedulingProfiles:
- {name: a, plugins: [{pluginRef: queue-scorer}]}
- {name: b, plugins: [{pluginRef: queue-scorer}]}
""")
    assert "2 scheduling profiles need a profile handler" in msg


def test_yaml_syntax_error() -> None:
    with pytest.raises(ConfigError, match="test.yaml is not valid YAML"):
        load_config_text("plugins: [type: {", "test.yaml")


def test_not_a_mapping_and_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config_text("- a\n- b\n", "test.yaml")
    with pytest.raises(ConfigError, match="schedulingProfile"):
        load_config_text("plugins: [{type: queue-scorer}]\nschedulingProfile: []\n", "t.yaml")


def test_bad_plugin_parameters_name_the_plugin_and_field() -> None:
    msg = error_of("""
plugins: [{name: prefix, type: prefix-cache-scorer, parameters: {blockSizeToken: 16}}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix}]}]
""")
    assert "plugin 'prefix' (prefix-cache-scorer): invalid parameters" in msg
    assert "blockSizeToken" in msg
    msg = error_of("""
plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 0}}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: max-score-picker}]}]
""")
    assert "maxNumOfEndpoints" in msg and "greater than or equal to 1" in msg
    msg = error_of("""
plugins: [{type: label-selector-filter, parameters: {matchExpressions: [{key: z, operator: In}]}}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: label-selector-filter}]}]
""")
    assert "operator In needs a non-empty 'values' list" in msg


def test_missing_file_and_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scheduler config"):
        load_config_file(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="neither a file nor a packaged policy"):
        resolve_config("no-such-policy")


@pytest.mark.parametrize("name", ["round-robin", "random", "least-request", "llm-d",
                                  "llm-d-optimized"])
def test_packaged_policies_load(name) -> None:
    assert name in packaged_policies()
    sched = Scheduler(resolve_config(name))
    assert list(sched.profiles) == ["default"]


def test_llm_d_policy_weights() -> None:
    sched = Scheduler(resolve_config("llm-d"))
    weights = {s.name: w for s, w in sched.profiles["default"].scorers}
    assert weights == {"prefix-cache-scorer": 3, "kv-cache-utilization-scorer": 2,
                       "queue-scorer": 2}
    assert sched.profiles["default"].picker.type_name == "max-score-picker"


def test_every_config_file_read_fails_with_one_clear_line(tmp_path: Path) -> None:
    from inferoute.configfiles import read_yaml_file
    from inferoute.semantic.categories import load_categories
    from inferoute.semantic.config import load_config as load_semantic

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1, 2\n")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    cases = [(tmp_path / "missing.yaml", "cannot read thing"), (tmp_path, "cannot read thing"),
             (bad_yaml, "is not valid YAML"), (latin1, "is not UTF-8 text")]
    for path, message in cases:
        with pytest.raises(ConfigError, match=message):
            read_yaml_file(path, "thing")
    assert read_yaml_file(_ok(tmp_path), "x") == {"a": 1}
    # the semantic router's loaders share it
    with pytest.raises(ConfigError, match="cannot read categories file"):
        load_categories(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read semantic config"):
        load_semantic(tmp_path)
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_semantic(bad_yaml)


def _ok(tmp_path: Path) -> Path:
    p = tmp_path / "ok.yaml"
    p.write_text("a: 1\n")
    return p


@pytest.mark.parametrize("consumer, profiles", [
    ("{type: inflight-load-producer, parameters: {accounting: prefill}}", ["default"]),
    ("{type: pd-profile-handler, parameters: {threshold: 64}}", ["decode", "prefill"]),
])
def test_consumed_data_needs_a_configured_producer(consumer: str, profiles: list[str]) -> None:
    profile_list = ", ".join(f"{{name: {n}, plugins: [{{pluginRef: queue-scorer}}]}}"
                             for n in profiles)
    text = f"plugins: [{consumer}, {{type: queue-scorer}}]\nschedulingProfiles: [{profile_list}]\n"
    msg = error_of(text)
    assert "consumes prefix-matched-tokens (dict[str, int]), which no configured plugin " \
           "produces" in msg
    # the same config with a prefix scorer configured (in no profile, even) loads
    build(text.replace("{type: queue-scorer}]",
                       "{type: queue-scorer}, {type: prefix-cache-scorer}]"))


def test_every_plugin_module_registers_its_type() -> None:
    """One module per plugin type, named after it: `foo-bar-scorer` lives in `foo_bar_scorer`."""
    from inferoute.core.scheduling.registry import get_plugin_class, plugin_types

    builtin = [t for t in plugin_types() if get_plugin_class(t).__module__.startswith("inferoute.")]
    assert len(builtin) >= 24
    for type_name in builtin:
        module = get_plugin_class(type_name).__module__
        assert module == "inferoute.core.plugins." + type_name.replace("-", "_"), type_name
