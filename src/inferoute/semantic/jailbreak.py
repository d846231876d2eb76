"""Jailbreak and prompt-injection detection: phrase heuristics plus an embedding model.

The heuristic score combines weighted patterns (instruction overrides, persona switches such
as "DAN" or "developer mode", requests for the hidden system prompt, filter bypasses) as
1 - prod(1 - w). The embedding score is the probability from a small logistic model trained
at start-up on the shipped jailbreak examples against benign texts (data/jailbreak.yaml and
the category examples). The final score is 1 - (1 - heuristic)(1 - probability); at or above
the configured threshold the request is blocked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .categories import data_path
from .embeddings import Embedder

#: (pattern, weight, trigger substrings): a weight near 1 means the phrase alone is a jailbreak
#: attempt. A pattern only runs when one of its triggers occurs in the lower-cased text (a
#: plain substring test), which keeps long prompts cheap.
_RULES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ((r"\b(ignore|disregard|forget|override|bypass)\b[\w\s,']{0,30}\b(previous|prior|above|"
     r"earlier|preceding|all|your|the|system|these|those)\b[\w\s,']{0,20}\b(instructions?|"
     r"rules|prompts?|text|directions|guidelines|programming|polic(y|ies)|restrictions|"
     r"training)\b"), 0.75, ("ignore", "disregard", "forget", "override", "bypass")),
    ((r"\bdo anything now\b|\byou are (now )?dan\b|\b(you are|you're|now) jail ?broken\b|"
      r"\bjailbreak (mode|activated|enabled|prompt)\b"), 0.8, ("anything now", "dan", "jail")),
    (r"\bjail ?(break|broken)\b", 0.3, ("jail",)),
    ((r"\b(developer|god|opposite|unrestricted|sudo|debug) mode\b"), 0.45, (" mode",)),
    ((r"\b(ignore|forget|disregard)\b[\w\s,']{0,15}\b(everything|anything|all|the text|"
     r"what)\b[\w\s']{0,10}\b(above|before|previous|earlier|said)\b"), 0.7,
     ("ignore", "forget", "disregard")),
    ((r"\b(rules|guidelines|restrictions|polic(y|ies)|instructions)\b[\w\s']{0,10}\b("
     r"no longer|don't|do not|doesn't|does not)\b[\w\s']{0,5}\bapply\b"), 0.7, ("apply",)),
    ((r"\b(filters?|guardrails?|safety|restrictions|moderation|censorship)\b[\w\s']{0,15}\b("
     r"are|is|have been|has been)\b[\w\s']{0,10}\b(off|disabled|switched off|turned off|"
     r"removed|lifted)\b"), 0.7, ("off", "disabled", "removed", "lifted")),
    ((r"\b(unrestricted|uncensored|unfiltered|evil|amoral)\b (ai|assistant|model|chatbot|"
     r"bot|version)\b"), 0.55, ("unrestricted", "uncensored", "unfiltered", "evil", "amoral")),
    ((r"\b(act as|pretend to be|roleplay as|play)\b my (late|dead|deceased)\b"), 0.5,
     ("late", "dead", "deceased")),
    ((r"\b(no|without( any)?|free of( any)?|zero) (content |safety |ethical |moral )?"
     r"(restrictions|filters?|censorship|limitations|guidelines|rules|constraints|"
     r"ethics|morals|polic(y|ies)|checks)\b"), 0.45,
     ("restriction", "filter", "censor", "limitation", "guideline", "rules", "constraint",
      "ethics", "morals", "polic", "checks")),
    ((r"\b(reveal|print|show|repeat|output|display|leak)\b[\w\s']{0,25}\b(system (prompt|"
     r"message)|hidden (instructions|prompt)|initial (prompt|instructions)|"
     r"instructions above|text above)\b"), 0.7, ("system", "hidden", "initial", "above")),
    ((r"\b(bypass|disable|turn off|get around|circumvent)\b[\w\s']{0,20}\b(safety|content|"
     r"filters?|moderation|guardrails?|censorship)\b"), 0.7,
     ("bypass", "disable", "turn off", "get around", "circumvent")),
    ((r"\b(uncensored|unfiltered|amoral|unaligned)\b"), 0.35,
     ("uncensored", "unfiltered", "amoral", "unaligned")),
    ((r"\bstay in character\b|\bnever (refuse|break character)\b"), 0.35,
     ("character", "never refuse")),
    ((r"\b(pretend|act as if|imagine|roleplay as|you are now)\b[\w\s,']{0,40}\b(no|without)\b"
     r"[\w\s']{0,15}\b(rules|limits|restrictions|filters|ethics)\b"), 0.6,
     ("pretend", "act as if", "imagine", "roleplay", "you are now")),
    ((r"\bnew (system prompt|instructions)\b[\w\s:']{0,20}\b(supersede|replace|override|you "
     r"have no|you are)\b"), 0.6, ("new system prompt", "new instructions")),
    ((r"\b(begin|start) your (reply|response|answer) with ['\"]?sure\b"), 0.6, ("sure",)),
)

HEURISTICS: tuple[tuple[re.Pattern[str], float, tuple[str, ...]], ...] = tuple(
    (re.compile(p), w, t) for p, w, t in _RULES)


@dataclass(slots=True, frozen=True)
class JailbreakVerdict:
    score: float
    heuristic: float
    #: the embedding model's probability that the text is a jailbreak
    model: float
    #: indexes of the matching heuristic patterns, for logs and tests
    matched: tuple[int, ...] = ()


def heuristic_score(text: str) -> tuple[float, tuple[int, ...]]:
    """Combined weight of matching phrase patterns, in [0, 1)."""
    low = text.lower()
    keep = 1.0
    matched: list[int] = []
    for i, (pattern, weight, triggers) in enumerate(HEURISTICS):
        if any(t in low for t in triggers) and pattern.search(low):
            keep *= 1.0 - weight
            matched.append(i)
    return 1.0 - keep, tuple(matched)


@dataclass(slots=True, frozen=True)
class JailbreakData:
    """The shipped (or a user's) training texts: jailbreaks, and benign look-alikes."""

    examples: list[str]
    benign: list[str]


def load_jailbreak_data(path: str | None = None) -> JailbreakData:
    """`examples:` (jailbreak attempts) and `benign:` (hard negatives) from a YAML file
    (the shipped data/jailbreak.yaml when `path` is None)."""
    source = data_path("jailbreak.yaml") if path is None else Path(path)
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    lists = []
    for key in ("examples", "benign"):
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(e, str) for e in items):
            raise ValueError(f"{source}: needs '{key}: [strings]'")
        lists.append(items)
    return JailbreakData(*lists)


def train_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, scale: float = 5.0,
                   iterations: int = 500, rate: float = 2.0) -> tuple[np.ndarray, float]:
    """Class-balanced L2-regularised logistic regression by full-batch gradient descent
    (deterministic: zero start, fixed steps). Returns (weights, bias) for `scale * x`."""
    xs = x * scale
    pos = max(1.0, float(y.sum()))
    weights = np.where(y == 1, (len(y) - pos) / pos, 1.0)
    weights /= weights.mean()
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(xs @ w + b)))
        g = (p - y) * weights / len(y)
        w -= rate * (xs.T @ g + l2 * w)
        b -= rate * float(g.sum())
    return (w * scale).astype(np.float32), b


class JailbreakDetector:
    """Phrase heuristics plus a logistic model on centred embeddings.

    The model is trained at start-up (a fraction of a second): positives are the shipped
    jailbreak examples, negatives the shipped benign look-alikes plus every category example
    (ordinary questions). Its probability and the heuristic score combine as
    1 - (1 - heuristic)(1 - probability).
    """

    def __init__(self, embedder: Embedder, *, mean: np.ndarray | None = None,
                 negatives: np.ndarray | None = None, data: JailbreakData | None = None) -> None:
        data = data or load_jailbreak_data()
        pos = embedder.embed_many(data.examples)
        neg = embedder.embed_many(data.benign)
        if negatives is not None and len(negatives):
            neg = np.vstack([neg, negatives])
        self._mean = np.zeros(pos.shape[1], dtype=np.float32) if mean is None else mean
        x = self._centre(np.vstack([pos, neg]))
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        self._w, self._b = train_logistic(x, y)

    def _centre(self, m: np.ndarray) -> np.ndarray:
        c = m - self._mean
        n = np.linalg.norm(c, axis=-1, keepdims=True)
        n[n == 0] = 1.0
        return (c / n).astype(np.float32)

    def probability(self, vector: np.ndarray) -> float:
        """The model's jailbreak probability for a (raw, normalised) prompt embedding."""
        q = self._centre(vector[None, :])[0]
        return float(1.0 / (1.0 + np.exp(-(float(q @ self._w) + self._b))))

    def check(self, text: str, vector: np.ndarray) -> JailbreakVerdict:
        h, matched = heuristic_score(text)
        p = self.probability(vector)
        return JailbreakVerdict(1.0 - (1.0 - h) * (1.0 - p), h, p, matched)
