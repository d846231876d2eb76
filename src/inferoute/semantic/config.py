"""Semantic-router configuration (pydantic), loaded from YAML or a dict, with clear errors.

Every key has a default, so `SemanticConfig()` is the shipped setup: `"model": "auto"` routes
over the 14 default categories, PII is routed to PII-allowed models only, jailbreaks are
blocked and the semantic cache is off. See docs/semantic.md for the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ..configfiles import read_yaml_file
from ..core.errors import ConfigError, explain_validation
from .categories import Category, load_categories, parse_categories

PiiType = Literal["credit_card", "email", "phone", "us_ssn", "iban", "ipv4"]
PII_TYPES: tuple[PiiType, ...] = ("credit_card", "email", "phone", "us_ssn", "iban", "ipv4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedderConfig(_Strict):
    kind: Literal["wordllama", "sentence-transformers"] = "wordllama"
    dim: int = 256
    #: folder of a sentence-transformers model on disk (kind: sentence-transformers)
    path: str | None = None
    #: average each text's embedding with its lower-cased text's (robust to casing)
    case_robust: bool = True

    @model_validator(mode="after")
    def _path_needed(self) -> EmbedderConfig:
        if self.kind == "sentence-transformers" and not self.path:
            raise ValueError("kind 'sentence-transformers' needs 'path' (a model folder)")
        return self


class ClassifierConfig(_Strict):
    #: confidence below this -> the default model (confidence is in [0, 1])
    threshold: float = Field(default=0.5, ge=0, le=1)
    #: softmax temperature over centroid cosine similarities (smaller = sharper)
    temperature: float = Field(default=0.05, gt=0)
    #: weight of the k-nearest-examples score added to the centroid score
    knn_weight: float = Field(default=0.25, ge=0)
    knn_k: int = Field(default=3, ge=1)
    #: longest text classified: longer prompts keep their head and tail halves
    max_chars: int = Field(default=1024, ge=16)


class ReasoningFamily(_Strict):
    """How a model family switches thinking on and off."""

    #: chat_template_kwargs: sets body.chat_template_kwargs[parameter] = true/false;
    #: reasoning_effort: sets body[parameter] = the category's effort (on) or "low" (off)
    type: Literal["chat_template_kwargs", "reasoning_effort"]
    parameter: str = "enable_thinking"


DEFAULT_FAMILIES: dict[str, ReasoningFamily] = {
    "qwen3": ReasoningFamily(type="chat_template_kwargs", parameter="enable_thinking"),
    "deepseek": ReasoningFamily(type="chat_template_kwargs", parameter="thinking"),
    "gpt-oss": ReasoningFamily(type="reasoning_effort", parameter="reasoning_effort"),
}


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    #: key into reasoning_families; None = the model has no thinking switch
    reasoning_family: str | None = None
    #: may this model receive prompts that contain personal data (pii.action: route)?
    #: (models not listed under `models` are not governed)
    pii_allowed: bool = False


class PiiConfig(_Strict):
    #: off: no scan; block: reject any request with PII; route: auto requests go only to
    #: models allowed to see it, explicit requests to a listed model with pii_allowed: false
    #: are rejected
    action: Literal["off", "block", "route"] = "route"
    types: list[PiiType] = Field(default_factory=lambda: list(PII_TYPES))


class JailbreakConfig(_Strict):
    enabled: bool = True
    #: combined score (heuristics + embedding model) at or above which a request is blocked
    threshold: float = Field(default=0.7, gt=0, le=1)
    #: YAML with `examples:` (jailbreaks) and `benign:` (look-alikes); None = shipped file
    data: str | None = None


class CacheConfig(_Strict):
    enabled: bool = False
    #: cosine similarity of the (case- and punctuation-folded) last user message needed for
    #: a hit; category_similarity overrides it per category
    similarity: float = Field(default=0.95, gt=0, le=1)
    category_similarity: dict[str, float] = Field(default_factory=dict)
    ttl_seconds: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    #: entries compared per (tenant, model, context) bucket; the oldest are evicted first
    max_entries_per_bucket: int = Field(default=512, ge=1)
    #: questions longer than this (folded, in characters) hit only when identical: in a long
    #: text one changed word barely moves a mean-of-tokens embedding
    exact_above_chars: int = Field(default=256, ge=1)
    #: largest reply stored, in characters of generated text
    max_reply_chars: int = Field(default=64_000, ge=1)


class SemanticConfig(_Strict):
    enabled: bool = True
    #: model names that ask for semantic routing
    auto_model_names: list[str] = Field(default_factory=lambda: ["auto"], min_length=1)
    #: served when confidence is below the threshold or no scored model is available
    default_model: str = "llama-3.1-8b-instruct"
    #: models the router may pick; empty = every model named in category scores + default
    models: list[ModelConfig] = Field(default_factory=list)
    reasoning_families: dict[str, ReasoningFamily] = Field(
        default_factory=lambda: dict(DEFAULT_FAMILIES))
    #: None = the shipped 14 categories; a string = a YAML file; a list = inline categories
    categories: str | list[dict[str, Any]] | None = None
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    jailbreak: JailbreakConfig = Field(default_factory=JailbreakConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @field_validator("reasoning_families")
    @classmethod
    def _keep_builtin_families(cls, v: dict[str, ReasoningFamily]) -> dict[str, ReasoningFamily]:
        return {**DEFAULT_FAMILIES, **v}

    @model_validator(mode="after")
    def _check_refs(self) -> SemanticConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate names {dupes}")
        for m in self.models:
            if m.reasoning_family and m.reasoning_family not in self.reasoning_families:
                raise ValueError(f"models[{m.name}].reasoning_family {m.reasoning_family!r} "
                                 f"is not one of {sorted(self.reasoning_families)}")
        if self.default_model in self.auto_model_names:
            raise ValueError("default_model cannot be one of auto_model_names")
        return self

    def load_categories(self) -> list[Category]:
        """The configured categories (ConfigError when a file or entry is invalid)."""
        if self.categories is None:
            cats = load_categories()
        elif isinstance(self.categories, str):
            cats = load_categories(self.categories)
        else:
            cats = parse_categories(self.categories, "semantic.categories")
        known = {c.name for c in cats}
        unknown = sorted(set(self.cache.category_similarity) - known)
        if unknown:
            raise ConfigError(f"semantic.cache.category_similarity names unknown categories: "
                              f"{', '.join(unknown)}")
        return cats

    def model(self, name: str) -> ModelConfig:
        """The model's settings (a default entry for unlisted models)."""
        for m in self.models:
            if m.name == name:
                return m
        return ModelConfig(name=name)


def parse_config(data: Any, where: str = "semantic config") -> SemanticConfig:
    """Validate a mapping (a top-level `semantic:` key is unwrapped); ConfigError if bad."""
    if data is None:
        data = {}
    if isinstance(data, dict) and set(data) == {"semantic"}:
        data = data["semantic"] or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return SemanticConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain_validation(exc, "semantic-router config", where)) from None


def load_config(path: str | Path | None) -> SemanticConfig:
    """Load a YAML file (None = defaults)."""
    if path is None:
        return SemanticConfig()
    p = Path(path).expanduser()
    return parse_config(read_yaml_file(p, "semantic config"), str(p))
