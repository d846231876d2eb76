"""Personal-data detection: pattern recognizers, each match confirmed by a validator.

A regular expression finds candidates; a validator rejects the ones that cannot be real:
card numbers must pass the Luhn check and have a known issuer prefix and length, IBANs the
ISO 13616 mod-97 check and their country's length, US social security numbers the SSA area /
group / serial rules, IPv4 addresses four octets of 0-255 (loopback, unspecified and broadcast
addresses are not personal), phone numbers a plausible digit count. Names and addresses need
a language model and are out of scope.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class PiiFinding:
    """One detected item: its type and where it is in the text (never logged in clear)."""

    type: str
    start: int
    end: int

    def masked(self, text: str) -> str:
        """The matched text with all but its last two characters hidden."""
        s = text[self.start:self.end]
        return "*" * max(0, len(s) - 2) + s[-2:]


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def luhn_valid(number: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) checksum."""
    digits = _digits(number)
    if not digits:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_issuer_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)                               # Visa
    p2, p4 = int(d[:2]), int(d[:4])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16                                          # Mastercard
    if p2 in (34, 37):
        return n == 15                                          # American Express
    if d.startswith("6011") or d.startswith("65") or 644 <= int(d[:3]) <= 649:
        return 16 <= n <= 19                                    # Discover
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19                                    # JCB
    if p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19                                    # Diners Club
    if d.startswith("62"):
        return 16 <= n <= 19                                    # UnionPay
    return False


def credit_card_valid(candidate: str) -> bool:
    """A plausible payment card number: 13-19 digits, known issuer prefix, Luhn-valid."""
    d = _digits(candidate)
    return 13 <= len(d) <= 19 and len(set(d)) > 1 and _card_issuer_ok(d) and luhn_valid(d)


#: IBAN lengths by country (ISO 13616 registry, the common ones)
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_valid(candidate: str) -> bool:
    """ISO 13616: known country, its length, and (rearranged, letters as 10..35) mod 97 == 1."""
    s = re.sub(r"[\s-]", "", candidate).upper()
    if len(s) < 15 or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    expected = IBAN_LENGTHS.get(s[:2])
    if expected is None or len(s) != expected:
        return False
    rearranged = s[4:] + s[:4]
    num = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(num) % 97 == 1


def us_ssn_valid(candidate: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not a known
    advertising number."""
    d = _digits(candidate)
    if len(d) != 9:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return d not in ("078051120", "219099999", "123456789")


def ipv4_personal(candidate: str) -> bool:
    """A valid dotted-quad IPv4 address that can identify a host (not loopback, unspecified,
    broadcast or documentation-only)."""
    parts = candidate.split(".")
    if len(parts) != 4 or any(len(p) > 1 and p[0] == "0" for p in parts):
        return False
    try:
        ip = ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip == ipaddress.IPv4Address(
        "255.255.255.255") or ip.is_multicast)


def phone_valid(candidate: str) -> bool:
    """8-15 digits (E.164 bound), not one repeated digit; NANP numbers need a valid area code."""
    d = _digits(candidate)
    if not 8 <= len(d) <= 15 or len(set(d)) == 1:
        return False
    plus = candidate.lstrip().startswith("+")
    if not plus and len(d) == 10 and d[0] in "01":
        return False  # NANP area codes start with 2-9
    if plus and d.startswith("1") and len(d) == 11 and d[1] in "01":
        return False
    return True


def email_valid(candidate: str) -> bool:
    local, _, domain = candidate.rpartition("@")
    if not local or len(local) > 64 or ".." in candidate or local.startswith("."):
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and labels[-1].isalpha() and all(
        lab and not lab.startswith("-") and not lab.endswith("-") for lab in labels)


_NETMASK_OCTETS = {"0", "128", "192", "224", "240", "248", "252", "254", "255"}
_VERSION_CONTEXT = re.compile(r"(version|release|build|firmware|v)\s*$", re.IGNORECASE)


def _ipv4_in_context(text: str, start: int, end: int) -> bool:
    """Not a netmask and not a version number ("version 2.4.1.9", "v1.2.3.4")."""
    parts = text[start:end].split(".")
    if parts[0] == "255" and all(p in _NETMASK_OCTETS for p in parts):
        return False
    return not _VERSION_CONTEXT.search(text[max(0, start - 12):start])


def _iban_span(text: str, start: int, end: int) -> int | None:
    """End of the longest valid IBAN starting at `start` within the candidate (the pattern
    can swallow a following word), or None."""
    groups = list(re.finditer(r"[A-Za-z0-9]+", text[start:end]))
    for k in range(len(groups), 0, -1):
        stop = start + groups[k - 1].end()
        if iban_valid(text[start:stop]):
            return stop
    return None


_Recognizer = tuple[str, "re.Pattern[str]", Callable[[str], bool]]

_NUM_START = r"(?<![\d.])(?<!\d\.)"
_NUM_END = r"(?!\.?\d)"

RECOGNIZERS: tuple[_Recognizer, ...] = (
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                         r"\.[A-Za-z]{2,}\b"), email_valid),
    ("iban", re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}"
                        r"(?:[ -]?[A-Za-z0-9]{1,3})?\b"), iban_valid),
    ("credit_card", re.compile(_NUM_START + r"\d(?:[ -]?\d){12,18}" + _NUM_END),
     credit_card_valid),
    ("us_ssn", re.compile(r"(?<![\d-])\d{3}[- ]\d{2}[- ]\d{4}(?![\d-])"), us_ssn_valid),
    ("ipv4", re.compile(_NUM_START + r"(?:\d{1,3}\.){3}\d{1,3}" + _NUM_END), ipv4_personal),
    ("phone", re.compile(
        r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,6}"
        r"|(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}"
        r"|0\d{3,4}[ .-]\d{3}[ .-]?\d{3,4})(?![\w-]|\.\d)"),
     phone_valid),
)


_DIGIT_RUN = re.compile(r"\d+")
_JOINERS = frozenset(" .-()+/")
_PAD = 4


def _windows(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where recognizers need to look, from one pass over the digit runs: regions around
    clusters of digit runs joined by short separators with at least 4 digits (the only places
    a card, SSN, IPv4 or phone number can be), and regions after a two-letter prefix followed
    by digits (IBANs). Scanning only these keeps a long prompt (tens of kB) cheap."""
    numbers: list[tuple[int, int]] = []
    ibans: list[tuple[int, int]] = []
    start = end = digits = 0
    open_ = False
    for m in _DIGIT_RUN.finditer(text):
        s, e = m.span()
        if s >= 2 and text[s - 2:s].isalpha() and e - s >= 2:
            ibans.append((max(0, s - 3), s + 46))
        if open_ and s - end <= 3 and all(c in _JOINERS for c in text[end:s]):
            end, digits = e, digits + e - s
            continue
        if open_ and digits >= 4:
            numbers.append((max(0, start - _PAD), end + _PAD))
        start, end, digits, open_ = s, e, e - s, True
    if open_ and digits >= 4:
        numbers.append((max(0, start - _PAD), end + _PAD))
    return _merge(numbers), _merge(ibans)


def _merge(windows: list[tuple[int, int]], gap: int = 64) -> list[tuple[int, int]]:
    """Join windows less than `gap` apart: fewer, larger scans."""
    out: list[tuple[int, int]] = []
    for s, e in windows:
        if out and s - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _email_windows(text: str) -> list[tuple[int, int]]:
    out, at = [], text.find("@")
    while at != -1:
        out.append((max(0, at - 80), at + 260))
        at = text.find("@", at + 1)
    return _merge(out)


def find_pii(text: str, types: Iterable[str] | None = None) -> list[PiiFinding]:
    """All validated findings in `text`, earlier recognizers winning overlapping spans
    (a card number is not also reported as a phone number)."""
    wanted = set(types) if types is not None else None
    taken: list[tuple[int, int]] = []
    out: list[PiiFinding] = []
    numbers, ibans = _windows(text)
    where = {"email": _email_windows(text), "iban": ibans}
    n = len(text)
    for name, pattern, valid in RECOGNIZERS:
        seen: set[tuple[int, int]] = set()
        for ws, we in where.get(name, numbers):
            # pos/endpos (not slicing): lookbehinds still see the text before the window
            for m in pattern.finditer(text, ws, min(n, we)):
                s, e = m.span()
                if (s, e) in seen or any(s < te and ts < e for ts, te in taken):
                    continue
                seen.add((s, e))
                if name == "iban":
                    stop = _iban_span(text, s, e)
                    if stop is None:
                        if m.group()[:2].upper() in IBAN_LENGTHS:
                            taken.append((s, e))  # an IBAN-shaped typo is not a phone number
                        continue
                    e = stop
                elif not valid(m.group()) or (name == "ipv4"
                                              and not _ipv4_in_context(text, s, e)):
                    # A long digit run that is not a card, or a dotted quad that is not a
                    # personal address (a netmask, a version), is not a phone number either.
                    if name == "ipv4" or (name == "credit_card"
                                          and (s == 0 or text[s - 1] != "+")):
                        taken.append((s, e))
                    continue
                taken.append((s, e))
                if wanted is None or name in wanted:
                    out.append(PiiFinding(name, s, e))
    out.sort(key=lambda f: f.start)
    return out
