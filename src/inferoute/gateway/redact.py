"""Credentials out of every log line: query-string secrets, auth headers, bearer tokens, keys.

A client may put its key where it does not belong (`?api_key=sk-...`, a header the access log
prints): `redact` masks the values of query parameters and headers whose names say they hold a
credential, `Bearer` tokens and `sk-`-style keys anywhere in a text. `RedactingAccessLogger`
applies it to every field of the access log; `RedactFilter` to every record of a log handler
(`inferoute serve` installs it on its own).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from aiohttp.web_log import AccessLogger

MASK = "[REDACTED]"
_SECRET_NAME = r"[\w.-]*(?:key|token|secret|passw(?:or)?d|auth\w*|signature|sig|credential|" \
               r"session|jwt|cookie)[\w.-]*"
_PATTERNS = [
    # name=value in a query string or a form: the value up to the next separator
    (re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&;#\s\"']*"), rf"\1{MASK}"),
    # "Name: value" of a credential header, as a header dump or a log line prints it
    (re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|cookie|set-cookie)"
                r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]+"), rf"\1\2{MASK}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), rf"\1 {MASK}"),
    (re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}"), rf"\1-{MASK}"),
]


def redact(text: str) -> str:
    """`text` with every credential it shows masked."""
    if not text:
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access logger with `redact` applied to every field (request line included)."""

    def _format_line(self, request: Any, response: Any, time: float
                     ) -> Iterable[tuple[str | tuple[str, str], str]]:
        return [(key, redact(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)]


class RedactFilter(logging.Filter):
    """Masks credentials in a record's final message (its arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Put a `RedactFilter` on `handlers` (default: the root logger's)."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
