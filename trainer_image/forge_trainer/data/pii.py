"""Personal-data redaction: e-mail addresses, phone numbers, IBANs, credit-card numbers (Luhn-checked)
and IP addresses are replaced by typed placeholders such as `<EMAIL>`, and counted by type."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from forge_trainer.config import PiiType

PLACEHOLDERS: dict[PiiType, str] = {
    PiiType.EMAIL: "<EMAIL>",
    PiiType.PHONE: "<PHONE>",
    PiiType.IBAN: "<IBAN>",
    PiiType.CREDIT_CARD: "<CREDIT_CARD>",
    PiiType.IP_ADDRESS: "<IP_ADDRESS>",
}

# look-behinds follow a first character class so the engine can skip ahead to candidates
_EMAIL = re.compile(r"[A-Za-z0-9](?<![\w.+-][A-Za-z0-9])[A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])")
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w.]\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,5}(?!\w)")


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum of payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether `iban` (spaces allowed) passes the ISO 13616 mod-97 check."""
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def _card_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv6_ok(match: str) -> bool:
    if match.count(":") < 2 or not any(c.isalnum() for c in match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _phone_ok(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    # a bare run of digits is more often an id or an amount than a phone number
    formatted = match.startswith("+") or "(" in match or any(c in match for c in " .-")
    return 9 <= digits <= 15 and formatted


# order matters: IBANs and card numbers are digit runs a phone pattern would also take
# (kind, pattern, validity check, substring the text must hold, needs a digit); order matters:
# IBANs and card numbers are digit runs a phone pattern would also take
_RULES: list[tuple[PiiType, re.Pattern[str], Callable[[str], bool] | None, str | None, bool]] = [
    (PiiType.EMAIL, _EMAIL, None, "@", False),
    (PiiType.IBAN, _IBAN, iban_valid, None, True),
    (PiiType.CREDIT_CARD, _CARD, _card_ok, None, True),
    (PiiType.IP_ADDRESS, _IPV4, None, ".", True),
    (PiiType.IP_ADDRESS, _IPV6, _ipv6_ok, ":", False),
    (PiiType.PHONE, _PHONE, _phone_ok, None, True),
]
_ANY_DIGIT = re.compile(r"\d")


class Redactor:
    """Replaces the configured kinds of personal data and counts replacements by type."""

    def __init__(self, types: Iterable[PiiType]) -> None:
        wanted = set(types)
        self.rules = [r for r in _RULES if r[0] in wanted]
        self.counts: dict[str, int] = {}

    def redact(self, text: str) -> str:
        """`text` with personal data replaced by placeholders; `counts` is updated."""
        has_digit = _ANY_DIGIT.search(text) is not None
        for kind, pattern, check, needle, needs_digit in self.rules:
            if (needle is not None and needle not in text) or (needs_digit and not has_digit):
                continue
            placeholder = PLACEHOLDERS[kind]
            hits = 0

            def _sub(m: re.Match[str], check: Callable[[str], bool] | None = check,
                     placeholder: str = placeholder) -> str:
                nonlocal hits
                if check is not None and not check(m.group(0)):
                    return m.group(0)
                hits += 1
                return placeholder

            text = pattern.sub(_sub, text)
            if hits:
                self.counts[kind.value] = self.counts.get(kind.value, 0) + hits
        return text
