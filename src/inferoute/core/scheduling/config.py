"""EndpointPickerConfig: the YAML that names plugins and assembles them into profiles.

    plugins:
    - type: prefix-cache-scorer          # `name` defaults to the type
      parameters: {blockSize: 64}
    - type: queue-scorer
    - type: max-score-picker
    schedulingProfiles:
    - name: default
      plugins:
      - pluginRef: prefix-cache-scorer
        weight: 3
      - pluginRef: queue-scorer
        weight: 2
      - pluginRef: max-score-picker

Loading validates everything a user can get wrong and raises ConfigError saying where.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
import yaml

from ..errors import ConfigError, explain_validation

__all__ = ["default_config", "DEFAULT_CONFIG_YAML", "EndpointPickerConfig", "load_config_text",
           "parse_config", "parse_duration", "PluginRef", "PluginSpec", "ProfileSpec",
           "SaturationSpec"]


class PluginSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    type: str = pydantic.Field(min_length=1)
    name: str | None = None
    parameters: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return self.name or self.type


class PluginRef(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    plugin_ref: str = pydantic.Field(alias="pluginRef", min_length=1)
    weight: float | None = None

    @pydantic.field_validator("weight")
    @classmethod
    def _weight_ok(cls, v: float | None) -> float | None:
        if v is not None and (v < 0 or v != v or v == float("inf")):
            raise ValueError("weight must be a finite number >= 0")
        return v


class ProfileSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(min_length=1)
    plugins: list[PluginRef] = pydantic.Field(default_factory=list)


class SaturationSpec(pydantic.BaseModel):
    """Saturation-detector thresholds (defaults of the reference endpoint picker).

    `kvCacheRule` is inferoute's: `queued` (the default) counts KV usage over its threshold
    only while requests wait in the model server, `always` on its own, as the reference does
    (core/admission/saturation.py says why).
    """

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    queue_depth_threshold: int = pydantic.Field(5, alias="queueDepthThreshold", ge=0)
    kv_cache_util_threshold: float = pydantic.Field(0.8, alias="kvCacheUtilThreshold", ge=0, le=1)
    kv_cache_rule: Literal["queued", "always"] = pydantic.Field("queued", alias="kvCacheRule")
    metrics_staleness_threshold: float = pydantic.Field(
        0.2, alias="metricsStalenessThreshold", gt=0,
        description="seconds; '200ms' and '1s' strings are accepted")

    @pydantic.field_validator("metrics_staleness_threshold", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v


class EndpointPickerConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    api_version: str | None = pydantic.Field(None, alias="apiVersion")
    kind: str | None = None
    plugins: list[PluginSpec] = pydantic.Field(min_length=1)
    scheduling_profiles: list[ProfileSpec] = pydantic.Field(alias="schedulingProfiles",
                                                            min_length=1)
    saturation_detector: SaturationSpec = pydantic.Field(default_factory=SaturationSpec,
                                                         alias="saturationDetector")

    @pydantic.model_validator(mode="after")
    def _references(self) -> "EndpointPickerConfig":
        names: set[str] = set()
        for spec in self.plugins:
            if spec.ref in names:
                raise ValueError(f"plugin name {spec.ref!r} is defined twice")
            names.add(spec.ref)
        profiles: set[str] = set()
        for prof in self.scheduling_profiles:
            if prof.name in profiles:
                raise ValueError(f"scheduling profile {prof.name!r} is defined twice")
            profiles.add(prof.name)
            for ref in prof.plugins:
                if ref.plugin_ref not in names:
                    raise ValueError(f"profile {prof.name!r} references undefined plugin "
                                     f"{ref.plugin_ref!r}; defined: {', '.join(sorted(names))}")
        return self


def parse_duration(text: str) -> float:
    """'50ms', '0.2s', '1m', '200' (seconds) -> seconds."""
    t = text.strip().lower()
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            try:
                return float(t[: -len(suffix)]) * scale
            except ValueError:
                break
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 50ms, 0.2s, 1m)") from None


def parse_config(data: Any, source: str = "<config>") -> EndpointPickerConfig:
    """Validate an already-parsed YAML/JSON mapping."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid EndpointPickerConfig in {source}: expected a mapping")
    try:
        return EndpointPickerConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain_validation(exc, "EndpointPickerConfig", source)) from None


def load_config_text(text: str, source: str = "<config>") -> EndpointPickerConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    return parse_config(data, source)


#: The llm-d guide's default: approximate prefix 3, KV-cache utilisation 2, queue 2. The core's
#: fallback for a `Scheduler` given no config; the shells' default policy is
#: `configfiles.DEFAULT_POLICY` (`inferoute`).
DEFAULT_CONFIG_YAML = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: max-score-picker
"""


def default_config() -> EndpointPickerConfig:
    return load_config_text(DEFAULT_CONFIG_YAML, "<default>")
