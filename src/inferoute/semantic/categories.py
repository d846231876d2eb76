"""Routing categories: what a category is, and loading the shipped defaults or a user file.

A category has a description and example utterances (both embedded to build the classifier),
model scores (the best-scoring available model serves it), an optional system prompt to
inject and whether the model should think (reasoning on/off, applied per model family).
The shipped defaults (data/categories.yaml) are the 14 MMLU-Pro subject areas.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..configfiles import read_yaml_file
from ..core.errors import ConfigError, explain_validation

DEFAULT_CATEGORIES = "categories.yaml"


class Category(BaseModel):
    """One routing category."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    examples: list[str] = Field(min_length=1)
    model_scores: dict[str, float] = Field(default_factory=dict)
    system_prompt: str | None = None
    use_reasoning: bool = False
    reasoning_effort: Literal["low", "medium", "high"] = "high"
    #: semantic-cache similarity for prompts of this category (overrides the global one)
    cache_similarity: float | None = Field(default=None, gt=0, le=1)

    @field_validator("examples")
    @classmethod
    def _non_blank(cls, v: list[str]) -> list[str]:
        out = [e.strip() for e in v if isinstance(e, str) and e.strip()]
        if not out:
            raise ValueError("needs at least one non-blank example")
        return out

    @field_validator("model_scores")
    @classmethod
    def _scores_finite(cls, v: dict[str, float]) -> dict[str, float]:
        for model, score in v.items():
            if not math.isfinite(score) or score < 0:
                raise ValueError(f"score for {model!r} must be a number >= 0")
        return v

    def best_model(self, available: set[str] | None) -> str | None:
        """The highest-scoring model among `available` (all scored models when None)."""
        best: tuple[float, str] | None = None
        for model, score in self.model_scores.items():
            if available is not None and model not in available:
                continue
            if best is None or score > best[0] or (score == best[0] and model < best[1]):
                best = (score, model)
        return best[1] if best else None


def parse_categories(data: Any, where: str = "categories") -> list[Category]:
    """Validate a list of category mappings (or {"categories": [...]}); ConfigError if bad."""
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty list of categories")
    out: list[Category] = []
    for i, item in enumerate(data):
        try:
            out.append(Category.model_validate(item))
        except ValidationError as exc:
            name = item.get("name", i) if isinstance(item, dict) else i
            raise ConfigError(explain_validation(exc, "categories", f"{where}[{name}]")) from None
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: duplicate category names: {', '.join(dupes)}")
    return out


def data_path(name: str) -> Path:
    """Path of a file shipped in inferoute/semantic/data/."""
    return Path(str(resources.files("inferoute.semantic") / "data" / name))


def load_categories(source: str | Path | None = None) -> list[Category]:
    """Load categories from a YAML file, or the shipped defaults when `source` is None."""
    path = data_path(DEFAULT_CATEGORIES) if source is None else Path(source).expanduser()
    return parse_categories(read_yaml_file(path, "categories file"), str(path))
