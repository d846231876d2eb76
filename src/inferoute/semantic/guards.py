"""Request guards: personal data (pii.py) and jailbreaks (jailbreak.py), and the blocked reply.

A blocked request gets HTTP 400 with the OpenAI error envelope, type
`invalid_request_error`, code `content_blocked`, a message naming the reason (never the
matched text), and the header `x-inferoute-blocked: pii|jailbreak`. 400 (not 403) because
the content of the request is what is refused, as OpenAI does for its moderation refusals;
clients must not retry it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import BadRequest
from .jailbreak import JailbreakDetector, JailbreakVerdict
from .pii import PiiFinding, find_pii


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
    pii: tuple[PiiFinding, ...]
    jailbreak: JailbreakVerdict | None

    @property
    def pii_types(self) -> list[str]:
        return sorted({f.type for f in self.pii})


class Guards:
    """Runs the enabled guards over a request's text."""

    def __init__(self, *, pii_types: list[str] | None, jailbreak: JailbreakDetector | None,
                 jailbreak_threshold: float = 0.5) -> None:
        self.pii_types = pii_types
        self.jailbreak = jailbreak
        self.jailbreak_threshold = jailbreak_threshold

    def check(self, full_text: str, user_text: str, user_vector: np.ndarray | None) -> GuardReport:
        """PII over the whole prompt; jailbreak over the user's text and its embedding."""
        pii = tuple(find_pii(full_text, self.pii_types)) if self.pii_types else ()
        verdict = None
        if self.jailbreak is not None and user_vector is not None:
            verdict = self.jailbreak.check(user_text, user_vector)
        return GuardReport(pii, verdict)

    def is_jailbreak(self, report: GuardReport) -> bool:
        return report.jailbreak is not None and report.jailbreak.score >= self.jailbreak_threshold
