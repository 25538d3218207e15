"""Personal-data redaction: e-mail addresses, phone numbers, IBANs, credit-card numbers and IP addresses
are replaced by typed placeholders such as `<EMAIL>`, and counted by type.

A false positive destroys data (a ZIP+4 code, a version string, an ISBN), so a candidate found by a
pattern is kept only when it passes a check: the IBAN mod-97 checksum, the Luhn checksum and a card
network's prefix and length, a parseable IP address that no version word precedes, a phone number that
`phonenumbers` (Google's libphonenumber metadata) accepts and that no word naming another kind of number
(order, part, ISBN, ZIP, ...) precedes. `benchmarks/bench_pii.py` measures precision and recall per type."""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers

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
# not the middle of a longer grouped number (a tracking number's first sixteen digits)
_CARD = re.compile(r"\d(?<![\w.,:/-]\d)(?<!\d \d)(?:[ -]?\d){11,18}(?![\w-]|[ .,:/]\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w.+-]?\w)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(r"(?<![\w+/.,:-])(?:\+|00)?(?:\d[ .-]?|\(\d{1,5}\)[ .-]?|\(0\)[ .-]?){3,17}\d"
                    r"(?: ?(?:x|ext\.?) ?\d{1,5})?(?!\w|[.,:/-]\w)")
_EXTENSION = re.compile(r"(?i) ?(?:x|ext\.?) ?\d{1,5}$")

# words that say the number after them is something else (for phone and card candidates), or that it is a
# phone number; looked for in the two words before a candidate
_OTHER_NUMBER_WORD = re.compile(r"(?i)(?:\b(?:order|invoice|po|p/n|part|sku|isbn|tracking|parcel|ts|timestamp|id|"
                          r"total|usd|eur|version|release|build|firmware|zip|ref|serial|ticket|case|account|clause|section|"
                          r"article|art|sec)\b"
                          r"(?:\W+\w+)?|#)\W*$")
_PHONE_WORD = re.compile(r"(?i)\b(?:tel|phone|call|mobile|mob|cell|fax|t[eé]l[eé]fono|telefon|t[eé]l|whatsapp)\b"
                         r"(?:\W+\w+){0,2}\W*$")
_VERSION_WORD = re.compile(r"(?i)\b(?:version|release|build|firmware|v|bump to|upgrade to|linux|kernel|oid)\W*$")
# postal codes and dates in the shape of a short phone number: US ZIP+4, Brazilian CEP, ISO and European
# dates, a range of years (Copyright 1996-2019)
_NOT_A_PHONE_SHAPE = re.compile(r"\d{5}-\d{4}|\d{5}-\d{3}|\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}"
                                r"|(?:19|20)\d\d ?[-/] ?(?:19|20)\d\d")
# the number-plan regions a national-format number (no + or 00) is read in: the corpora Forge is used
# on are mostly from these; an international number is checked against its own country code
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "PL", "SE", "CH", "JP", "IN", "AU", "CA")
# card networks: (prefixes, lengths), from the ISO/IEC 7812 issuer identification ranges in use
_CARD_NETWORKS: list[tuple[tuple[range, ...], frozenset[int]]] = [
    ((range(4, 5),), frozenset({13, 16, 19})),                                       # Visa
    ((range(51, 56), range(2221, 2721)), frozenset({16})),                           # Mastercard
    ((range(34, 35), range(37, 38)), frozenset({15})),                               # American Express
    ((range(6011, 6012), range(644, 660)), frozenset({16, 17, 18, 19})),             # Discover
    ((range(35, 36),), frozenset({16, 17, 18, 19})),                             # JCB (3528-3589 issued; 35 as generators and test data use it)
    ((range(300, 306), range(36, 37), range(38, 40)), frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    ((range(62, 63),), frozenset({16, 17, 18, 19})),                                 # UnionPay
    ((range(50, 51), range(56, 59), range(6304, 6305), range(67, 68)), frozenset(range(12, 20))),  # Maestro
]


@dataclass(frozen=True)
class PiiMatch:
    """A piece of personal data found in a text: where it is and its type."""

    start: int
    end: int
    kind: PiiType


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


def card_number_valid(digits: str) -> bool:
    """Whether `digits` has a card network's prefix and length and passes the Luhn checksum."""
    for prefixes, lengths in _CARD_NETWORKS:
        if len(digits) in lengths and any(int(digits[:len(str(r.start))]) in r for r in prefixes):
            return luhn_valid(digits)
    return False


def _card_ok(text: str, m: re.Match[str]) -> bool:
    groups = [len(g) for g in _CARD_SEPARATOR.split(m.group(0))]
    # printed cards group digits 4-4-4-4(-3) or 4-6-5 (Amex); an order number's 3-7-7 is not a card
    grouped_as_card = (len(groups) == 1 or groups in ([4, 6, 5], [4, 6, 4])
                       or (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4))
    return (grouped_as_card and _OTHER_NUMBER_WORD.search(_before(text, m)) is None
            and card_number_valid("".join(c for c in m.group(0) if c.isdigit())))


def _iban_ok(text: str, m: re.Match[str]) -> bool:
    return iban_valid(m.group(0))


def _before(text: str, m: re.Match[str], width: int = 24) -> str:
    """The words before a match on its line: the context that says what a number is."""
    head = text[max(0, m.start() - width):m.start()]
    return head[head.rfind("\n") + 1:]


def _ipv4_ok(text: str, m: re.Match[str]) -> bool:
    # "release 4.2.1.0" is a version: an address is not introduced by a version word; and four small
    # parts (7.3.1.3) are a version far more often than one of the ~0.05% of addresses that look so
    # (public resolvers such as 8.8.8.8 among them, which are nobody's personal data); 10.x is private
    octets = [int(o) for o in m.group(0).split(".")]
    if max(octets) < 20 and octets[0] != 10:
        return False
    return _VERSION_WORD.search(_before(text, m)) is None


def _ipv6_ok(text: str, m: re.Match[str]) -> bool:
    match = m.group(0)
    if match.count(":") < 2 or not any(c.isalnum() for c in match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)  # logs and tables repeat the same numbers; a check costs ~0.3 ms
def phone_number_valid(candidate: str, lenient: bool = False) -> bool:
    """Whether `candidate` is a phone number by libphonenumber's metadata: an international one (+ or 00)
    of a possible length for its country code, or a national one valid in one of `PHONE_REGIONS` (with
    `lenient`, of a possible length there)."""
    number = _EXTENSION.sub("", candidate.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    if number.startswith("+"):
        try:
            return bool(phonenumbers.is_possible_number(phonenumbers.parse(number, None)))
        except phonenumbers.NumberParseException:
            return False
    for region in PHONE_REGIONS:
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            continue
        # for the region it was read in: is_valid_number would first look for the region among the
        # ~25 that share a country code (+1), the costliest step of a check that can run per digit group
        if phonenumbers.is_valid_number_for_region(parsed, region) or (
                lenient and phonenumbers.is_possible_number(parsed)):
            return True
    return False


def _phone_shape_ok(match: str) -> bool:
    """Whether the digit groups look like a phone number's, not an ISBN's, a version's or a decimal's."""
    number = _EXTENSION.sub("", match)
    groups = _DIGIT_RUN.findall(number.replace("(0)", ""))
    if not 7 <= sum(map(len, groups)) <= 15 or len(groups[-1]) < 2 or _NOT_A_PHONE_SHAPE.fullmatch(number):
        return False  # a one-digit last group is an ISBN's check digit
    years = [len(g) == 4 and 1900 <= int(g) < 2100 for g in groups]
    if any(a and b for a, b in itertools.pairwise(years)):
        return False  # Copyright 2019 2020 2021
    if "." in number:  # dotted: 206.269.0743, not 73.7942785 (a decimal), 17.10.14.17 (a version) or 252.227-7013
        return not _OTHER_SEPARATOR.search(number) and len(groups) >= 3 and min(map(len, groups[1:])) >= 2 and not (
            len(groups) == 4 and max(map(len, groups)) <= 3)
    return True


def _phone_ok(text: str, m: re.Match[str]) -> bool:
    match = m.group(0)
    if not _phone_shape_ok(match):
        return False
    before = _before(text, m)
    context = _PHONE_WORD.search(before) is not None  # "phone no." is a phone number, "order no." is not
    if not context and _OTHER_NUMBER_WORD.search(before):
        return False
    if not context:
        # a bare run of digits is more often an id, an amount or a timestamp than a phone number, and a
        # national number with its area code has at least nine digits almost everywhere (years, counts
        # and short codes have fewer)
        international = match.startswith(("+", "00"))
        formatted = international or "(" in match or any(c in match for c in " .-")
        if not formatted or (not international and sum(c.isdigit() for c in _EXTENSION.sub("", match)) < 9):
            return False
    return phone_number_valid(match, lenient=context)


# (kind, pattern, check of the match in its text, substring the text must hold, needs a digit);
# order matters: IBANs and card numbers are digit runs a phone pattern would also take
_RULES: list[tuple[PiiType, re.Pattern[str], Callable[[str, re.Match[str]], bool] | None, str | None, bool]] = [
    (PiiType.EMAIL, _EMAIL, None, "@", False),
    (PiiType.IBAN, _IBAN, _iban_ok, None, True),
    (PiiType.CREDIT_CARD, _CARD, _card_ok, None, True),
    (PiiType.IP_ADDRESS, _IPV4, _ipv4_ok, ".", True),
    (PiiType.IP_ADDRESS, _IPV6, _ipv6_ok, ":", False),
    (PiiType.PHONE, _PHONE, _phone_ok, None, True),
]
_ANY_DIGIT = re.compile(r"\d")
_DIGIT_RUN = re.compile(r"\d+")
_CARD_SEPARATOR = re.compile(r"[ -]")
_OTHER_SEPARATOR = re.compile(r"\d[ -]\d")


class Redactor:
    """Replaces the configured kinds of personal data and counts replacements by type."""

    def __init__(self, types: Iterable[PiiType]) -> None:
        wanted = set(types)
        self.rules = [r for r in _RULES if r[0] in wanted]
        self.counts: dict[str, int] = {}

    def find(self, text: str) -> list[PiiMatch]:
        """The personal data in `text`, in order; a span an earlier rule took is not matched again."""
        has_digit = _ANY_DIGIT.search(text) is not None
        found: list[PiiMatch] = []  # sorted by start, never overlapping
        for kind, pattern, check, needle, needs_digit in self.rules:
            if (needle is not None and needle not in text) or (needs_digit and not has_digit):
                continue
            for m in pattern.finditer(text):
                at = bisect.bisect_left(found, m.start(), key=lambda f: f.start)
                if (at < len(found) and found[at].start < m.end()) or (at > 0 and found[at - 1].end > m.start()):
                    continue
                if check is None or check(text, m):
                    found.insert(at, PiiMatch(m.start(), m.end(), kind))
        return found

    def redact(self, text: str) -> str:
        """`text` with personal data replaced by placeholders; `counts` is updated."""
        found = self.find(text)
        if not found:
            return text
        parts, at = [], 0
        for f in found:
            parts += [text[at:f.start], PLACEHOLDERS[f.kind]]
            at = f.end
            self.counts[f.kind.value] = self.counts.get(f.kind.value, 0) + 1
        parts.append(text[at:])
        return "".join(parts)
