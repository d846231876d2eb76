"""Request guards: personal data (pii.py) and jailbreaks (jailbreak.py), and the blocked reply.

A blocked request gets HTTP 400 with the OpenAI error envelope, type
`invalid_request_error`, code `content_blocked`, a message naming the reason (never the
matched text), and the header `x-inferoute-blocked: pii|jailbreak`. 400 (not 403) because
the content of the request is what is refused, as OpenAI does for its moderation refusals;
clients must not retry it unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..core.errors import BadRequest
from .jailbreak import JailbreakDetector, JailbreakVerdict
from .pii import find_pii


class ContentBlocked(BadRequest):
    """The request was refused by a guard (400, code content_blocked)."""

    code = "content_blocked"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, headers={"x-inferoute-blocked": reason})
        self.reason = reason


def pii_blocked(types: list[str], model: str | None = None) -> ContentBlocked:
    kinds = ", ".join(sorted(set(types)))
    where = f" to model {model!r}" if model else ""
    return ContentBlocked(f"request blocked: it contains personal data ({kinds}) that may not "
                          f"be sent{where}; remove it and retry", reason="pii")


def jailbreak_blocked(score: float) -> ContentBlocked:
    return ContentBlocked(f"request blocked: it looks like an attempt to override the model's "
                          f"instructions or safety rules (score {score:.2f})",
                          reason="jailbreak")


@dataclass(slots=True, frozen=True)
class GuardReport:
    pii_types: list[str]
    jailbreak: JailbreakVerdict | None


class Guards:
    """Runs the enabled guards over a request's text.

    PII is scanned per message and the answer for long messages is memoised (a bounded LRU):
    a shared system prompt of thousands of tokens is scanned once, not on every request.
    """

    def __init__(self, *, pii_types: list[str] | None, jailbreak: JailbreakDetector | None,
                 jailbreak_threshold: float = 0.7, memo_size: int = 256) -> None:
        self.pii_types = pii_types
        self.jailbreak = jailbreak
        self.jailbreak_threshold = jailbreak_threshold
        self._memo: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._memo_size = memo_size

    def _pii_in(self, text: str) -> frozenset[str]:
        if len(text) < 512:
            return frozenset(f.type for f in find_pii(text, self.pii_types))
        hit = self._memo.get(text)
        if hit is not None:
            self._memo.move_to_end(text)
            return hit
        found = frozenset(f.type for f in find_pii(text, self.pii_types))
        self._memo[text] = found
        if len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return found

    def check(self, texts: list[str], user_text: str,
              user_vector: np.ndarray | None) -> GuardReport:
        """PII over every message text; jailbreak over the user's text and its embedding."""
        found: set[str] = set()
        if self.pii_types:
            for t in texts:
                found |= self._pii_in(t)
        pii = sorted(found)
        verdict = None
        if self.jailbreak is not None and user_vector is not None:
            verdict = self.jailbreak.check(user_text, user_vector)
        return GuardReport(pii, verdict)

    def is_jailbreak(self, report: GuardReport) -> bool:
        return report.jailbreak is not None and report.jailbreak.score >= self.jailbreak_threshold
