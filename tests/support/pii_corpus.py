"""A labelled corpus for measuring PII redaction: personal data made with Faker in many locales, mixed
with look-alikes that are not personal data (postal codes, dates, versions, ISBNs, order and part
numbers, hashes, ...). Shared by `benchmarks/bench_pii.py` and `tests/unit/test_pii_precision.py`."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from faker import Faker

from forge_trainer.config import PiiType

LOCALES = ("en_US", "en_GB", "en_CA", "en_AU", "en_IN", "de_DE", "de_CH", "fr_FR", "es_ES", "it_IT",
           "nl_NL", "pt_BR", "pl_PL", "sv_SE", "ja_JP")
CARD_KINDS = ("visa13", "visa16", "visa19", "mastercard", "amex", "discover", "jcb16", "diners")


@dataclass(frozen=True)
class Span:
    """Where a piece of personal data sits in a text, and its type."""

    start: int
    end: int
    kind: PiiType


@dataclass(frozen=True)
class Sample:
    """One labelled text: its personal data spans (empty for a look-alike) and the family it was made from."""

    text: str
    spans: tuple[Span, ...]
    family: str


def _card(fake: Faker, rng: random.Random) -> str:
    number = str(fake.credit_card_number(rng.choice(CARD_KINDS)))
    if rng.random() < 0.5:  # as printed on the card: groups of four
        number = " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def _iban(fake: Faker, rng: random.Random) -> str:
    iban = str(fake.iban())
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _ip(fake: Faker, rng: random.Random) -> str:
    return str(rng.choice([fake.ipv4_public, fake.ipv4_private, fake.ipv6])())


PII: dict[PiiType, tuple[Callable[[Faker, random.Random], str], tuple[str, ...]]] = {
    PiiType.EMAIL: (lambda f, r: str(f.email()),
                    ("Write to {} for details.", "{name} <{}>", "From: {}", "contact: {}", "{}")),
    PiiType.PHONE: (lambda f, r: str(f.phone_number()),
                    ("Call me at {} tomorrow.", "Tel.: {}", "{name}, phone {}", "mobile {}", "{}")),
    PiiType.IBAN: (_iban, ("IBAN: {}", "Please transfer to {} by Friday.", "account {}", "{}")),
    PiiType.CREDIT_CARD: (_card, ("card number {}", "Paid with {} last week.", "CC: {}", "{}")),
    PiiType.IP_ADDRESS: (_ip, ("Login from {} failed.", "client {} connected", "host={}", "{}")),
}


def _hexstr(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _isbn10(rng: random.Random) -> str:
    body = [rng.randrange(10) for _ in range(9)]
    check = (11 - sum((10 - i) * d for i, d in enumerate(body)) % 11) % 11
    digits = "".join(map(str, body)) + ("X" if check == 10 else str(check))
    return f"{digits[0]}-{digits[1:4]}-{digits[4:9]}-{digits[9]}"


def _version(rng: random.Random) -> str:
    parts = [str(rng.randrange(0, 12)) for _ in range(rng.choice([2, 3, 3, 4]))]
    return ".".join(parts) + rng.choice(["", "", "-rc1", "-13-amd64", "+deb12u1"])


# family -> (value maker, templates); every value here is NOT personal data
LOOKALIKES: dict[str, tuple[Callable[[Faker, random.Random], str], tuple[str, ...]]] = {
    "debian_copyright": (lambda f, r: r.choice(["02110-1301", "02111-1307"]),
                         ("51 Franklin Street, Fifth Floor, Boston, MA {}, USA",
                          "59 Temple Place, Suite 330, Boston, MA {} USA",
                          "Free Software Foundation, Inc., Boston, MA  {}  USA")),
    "copyright_years": (lambda f, r: r.choice([f"{(y := r.randrange(1980, 2020))}-{y + r.randrange(1, 9)}",
                                               f"{(y := r.randrange(1980, 2015))}, {y + 2}-{y + 5}",
                                               " ".join(str(y) for y in range(r.randrange(1990, 2020), 2025))]),
                        ("Copyright (C) {} Free Software Foundation, Inc.", "Copyright: {} Red Hat, Inc.",
                         "(c) {} The Authors", "Copyright {} g10 Code GmbH")),
    "legal_clause": (lambda f, r: f"{r.randrange(100, 999)}.{r.randrange(100, 999)}-{r.randrange(1000, 9999)}",
                     ("as defined in Clause {} (c) (1)", "subparagraph (c)(1)(ii) of DFARS {}")),
    "zip_plus4": (lambda f, r: f"{r.randrange(501, 99951):05d}-{r.randrange(1, 10000):04d}", ("{city}, {state} {}", "ZIP {}", "{} US")),
    "postal_address": (lambda f, r: str(f.address()).replace("\n", ", "), ("Ship to: {}", "{}")),
    "date": (lambda f, r: f.date_time().strftime(r.choice(["%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y %H:%M:%S",
                                                           "%Y-%m-%dT%H:%M:%S", "%d/%m/%Y", "%Y%m%d"])),
             ("on {}", "Date: {}", "last modified {}", "{}")),
    "version": (lambda f, r: _version(r), ("version {}", "upgrade to v{}", "Linux {}", "{}")),
    "ip_like_version": (lambda f, r: ".".join(str(r.randrange(0, 20)) for _ in range(4)),
                        ("release {}", "firmware version {}", "build {} is out", "bump to {}")),
    "isbn": (lambda f, r: str(f.isbn13()) if r.random() < 0.6 else _isbn10(r), ("ISBN {}", "isbn: {}", "({})")),
    "order_number": (lambda f, r: r.choice([f"{r.randrange(2015, 2027)}-{r.randrange(10**6):06d}-{r.randrange(100):02d}",
                                            f"{r.randrange(10**9, 10**10)}",
                                            f"{r.randrange(100, 999)}-{r.randrange(10**6, 10**7)}-{r.randrange(10**6, 10**7)}"]),
                     ("Order #{}", "order number {}", "Invoice {} is attached", "PO {}")),
    "part_number": (lambda f, r: r.choice([f"{r.randrange(100, 999)}-{r.randrange(1000, 9999)}-{r.randrange(10, 99)}",
                                           f"{r.randrange(10, 99)}-{r.randrange(1000, 9999)}-{r.randrange(1000, 9999)}",
                                           f"{r.randrange(1000, 9999)} {r.randrange(100, 999)} {r.randrange(100, 999)}"]),
                    ("P/N {}", "part no. {}", "SKU {}", "replace with part {}")),
    "hash": (lambda f, r: r.choice([hashlib.sha1(r.randbytes(8)).hexdigest(), hashlib.sha256(r.randbytes(8)).hexdigest(),
                                    _hexstr(r, 7), str(uuid.UUID(int=r.getrandbits(128)))]),
             ("commit {}", "sha256:{}", "id {}", "{}")),
    "amount": (lambda f, r: r.choice([f"{r.randrange(1000, 10**7):,}.{r.randrange(100):02d}",
                                      f"{r.randrange(1000, 10**6):,}".replace(",", " ") + f",{r.randrange(100):02d} EUR"]),
               ("total {}", "USD {}", "{}")),
    "time": (lambda f, r: f.time(), ("at {}", "{} UTC")),
    "mac_address": (lambda f, r: str(f.mac_address()), ("MAC {}", "hwaddr {}")),
    "coordinates": (lambda f, r: f"{f.latitude()}, {f.longitude()}", ("located at {}", "GPS {}")),
    "unix_time": (lambda f, r: str(r.randrange(10**9, 2 * 10**9) * (1000 if r.random() < 0.5 else 1)),
                  ("ts={}", "timestamp {}")),
    "tracking_number": (lambda f, r: " ".join(str(r.randrange(1000, 9999)) for _ in range(r.choice([3, 5]))),
                        ("tracking {}", "parcel {} shipped")),
}


def _fill(template: str, value: str, fake: Faker) -> tuple[str, int]:
    """`template` with its slot filled; the value's offset in the result."""
    head, tail = template.split("{}")
    fields = {"name": fake.name(), "city": "Boston", "state": "MA"}
    head = head.format(**{k: v for k, v in fields.items() if "{" + k + "}" in head})
    tail = tail.format(**{k: v for k, v in fields.items() if "{" + k + "}" in tail})
    return head + value + tail, len(head)


def make_sample(family: str, fake: Faker, rng: random.Random) -> Sample:
    """One labelled sentence of `family` (a PiiType value or a look-alike family name)."""
    if family in LOOKALIKES:
        make, templates = LOOKALIKES[family]
        text, _ = _fill(rng.choice(templates), make(fake, rng), fake)
        return Sample(text, (), family)
    kind = PiiType(family)
    make, templates = PII[kind]
    value = make(fake, rng)
    text, at = _fill(rng.choice(templates), value, fake)
    return Sample(text, (Span(at, at + len(value), kind),), family)


def labelled_corpus(n_per_family: int, seed: int, locales: tuple[str, ...] = LOCALES) -> list[Sample]:
    """`n_per_family` sentences of every PII type and every look-alike family, in rotating locales."""
    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in locales}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed * 1000 + i)
    families = [k.value for k in PII] + list(LOOKALIKES)
    return [make_sample(family, fakers[locales[i % len(locales)]], rng)
            for i in range(n_per_family) for family in families]


def join_samples(samples: list[Sample], sep: str = "\n") -> Sample:
    """Several samples as one document (spans shifted), so look-alikes sit next to personal data."""
    text, spans, offset = [], [], 0
    for s in samples:
        spans += [Span(sp.start + offset, sp.end + offset, sp.kind) for sp in s.spans]
        text.append(s.text)
        offset += len(s.text) + len(sep)
    return Sample(sep.join(text), tuple(spans), "document")


@dataclass
class Tally:
    """Matches of one type: right and wrong detections, labelled spans found and missed."""

    tp: int = 0
    fp: int = 0
    found: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        """Share of the detections that are personal data of this type (1.0 with none)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """Share of this type's personal data that was detected (1.0 with none)."""
        return self.found / (self.found + self.fn) if self.found + self.fn else 1.0


def score(samples: list[Sample], find: Callable[[str], list[Span]],
          errors: list[tuple[str, Sample, Span]] | None = None) -> dict[PiiType, Tally]:
    """Per-type tallies of `find` over `samples`: a detection is right when it overlaps a labelled span
    of its type; `errors` (if given) collects ('fp' | 'fn', sample, span) for a reader."""
    tallies = {kind: Tally() for kind in PiiType}
    for sample in samples:
        found = find(sample.text)
        for span in found:
            if any(g.kind == span.kind and g.start < span.end and span.start < g.end for g in sample.spans):
                tallies[span.kind].tp += 1
            else:
                tallies[span.kind].fp += 1
                if errors is not None:
                    errors.append(("fp", sample, span))
        for g in sample.spans:
            if any(f.kind == g.kind and f.start < g.end and g.start < f.end for f in found):
                tallies[g.kind].found += 1
            else:
                tallies[g.kind].fn += 1
                if errors is not None:
                    errors.append(("fn", sample, g))
    return tallies
