"""PII recognizers and their validators."""

from inferoute.semantic.pii import (
    credit_card_valid,
    find_pii,
    iban_valid,
    ipv4_personal,
    luhn_valid,
    phone_valid,
    us_ssn_valid,
)


def types(text: str) -> list[str]:
    return [f.type for f in find_pii(text)]


def test_luhn_and_card_numbers() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert credit_card_valid("4111 1111 1111 1111")          # Visa test number
    assert credit_card_valid("5555-5555-5555-4444")          # Mastercard
    assert credit_card_valid("378282246310005")              # Amex, 15 digits
    assert not credit_card_valid("4111 1111 1111 1112")      # Luhn fails
    assert not credit_card_valid("1234567812345670")         # Luhn ok, no issuer prefix 1
    assert not credit_card_valid("0000000000000000")
    assert not credit_card_valid("37828224631000")           # Amex prefix, wrong length


def test_iban_mod97_and_length() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")     # check digits wrong
    assert not iban_valid("DE8937040044053201300")           # one char short
    assert not iban_valid("ZZ82WEST12345698765432")          # unknown country


def test_ssn_area_group_serial_rules() -> None:
    assert us_ssn_valid("536-22-4819")
    for bad in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000",
                "078-05-1120"):
        assert not us_ssn_valid(bad), bad


def test_ipv4_and_phone_validators() -> None:
    assert ipv4_personal("8.8.8.8")
    assert ipv4_personal("192.168.1.20")
    assert not ipv4_personal("127.0.0.1")
    assert not ipv4_personal("256.1.1.1")
    assert not ipv4_personal("01.2.3.4")
    assert phone_valid("+44 20 7946 0958")
    assert phone_valid("(415) 555-2671")
    assert not phone_valid("(015) 555-2671")                 # NANP area code cannot start 0
    assert not phone_valid("111-111-1111")


def test_find_pii_in_text() -> None:
    assert types("charge 4111 1111 1111 1111.") == ["credit_card"]
    assert types("mail me: jane.doe@example.co.uk!") == ["email"]
    assert types("IBAN GB82 WEST 1234 5698 7654 32 please") == ["iban"]
    assert types("ssn 536-22-4819 and ip 203.0.113.9") == ["us_ssn", "ipv4"]
    assert types("call +1 646 555 3890 now") == ["phone"]
    assert types("mobile 07700 900123, landline 0161 496 0000") == ["phone", "phone"]


def test_find_pii_ignores_look_alikes() -> None:
    for text in ("card 4111 1111 1111 1112 typo", "version 2.4.1.9 released",
                 "netmask 255.255.255.0", "python 3.11.7", "on 2024-10-15 at 14:30",
                 "ISBN 978-0-306-40615-7", "ping 127.0.0.1", "x = 3.14159265358979"):
        assert types(text) == [], text


def test_type_filter_and_masking() -> None:
    text = "a@b.io and 4111111111111111"
    found = find_pii(text, ["credit_card"])
    assert [f.type for f in found] == ["credit_card"]
    assert found[0].masked(text).endswith("11") and "4111" not in found[0].masked(text)


def _full_scan(text: str) -> list[tuple[str, int, int]]:
    """Reference: every recognizer over the whole text (what find_pii's windows must equal)."""
    from inferoute.semantic.pii import (
        IBAN_LENGTHS,
        RECOGNIZERS,
        _iban_span,
        _ipv4_in_context,
    )
    taken: list[tuple[int, int]] = []
    out = []
    for name, pattern, valid in RECOGNIZERS:
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            if name == "iban":
                stop = _iban_span(text, s, e)
                if stop is None:
                    if m.group()[:2].upper() in IBAN_LENGTHS:
                        taken.append((s, e))
                    continue
                e = stop
            elif not valid(m.group()) or (name == "ipv4" and not _ipv4_in_context(text, s, e)):
                if name == "ipv4" or (name == "credit_card" and (s == 0 or text[s - 1] != "+")):
                    taken.append((s, e))
                continue
            taken.append((s, e))
            out.append((name, s, e))
    return sorted(out, key=lambda t: t[1])


def test_windowed_scan_matches_a_full_scan_on_random_texts() -> None:
    import random
    rng = random.Random(11)
    pieces = ["the", "and", "call", "4111 1111 1111 1111", "4111 1111 1111 1112", "a@b.io",
              "x.y@mail.example.org", "GB82 WEST 1234 5698 7654 32", "536-22-4819",
              "8.8.8.8", "10.0.0.1.", "+44 20 7946 0958", "(415) 555-2671", "v1.2.3.4", "42",
              "3.5", "2024-10-15", "GB12", "@", "phone:", "iban", "(", ")", "-", "+", "."]
    for _ in range(300):
        text = "".join(rng.choice(pieces) + rng.choice([" ", "", ", ", "\n"])
                       for _ in range(rng.randint(1, 40)))
        got = [(f.type, f.start, f.end) for f in find_pii(text)]
        assert got == _full_scan(text), text
