"""Redaction leaves numbers that are not personal data alone, and still finds the personal data
(precision and recall per type against Presidio: benchmarks/bench_pii.py)."""

from __future__ import annotations

import pytest

from forge_trainer.config import PiiType
from forge_trainer.data.pii import Redactor
from tests.support.pii_corpus import LOOKALIKES, Span, labelled_corpus, score

ALL = list(PiiType)


def test_debian_copyright_zip_plus_4_and_years_stay() -> None:
    text = ("Copyright (C) 1989, 1991, 2000-2015 Free Software Foundation, Inc.,\n"
            "51 Franklin Street, Fifth Floor, Boston, MA 02110-1301, USA\n"
            "59 Temple Place, Suite 330, Boston, MA  02111-1307  USA\n"
            "Copyright: 1996-2019 Red Hat, Inc. 2018, 2019 2020 2021 g10 Code GmbH")
    redactor = Redactor(ALL)
    assert redactor.redact(text) == text
    assert redactor.counts == {}


# every look-alike family of the benchmark corpus, by hand, in the forms the corpus makes
LOOKALIKE_TEXTS: dict[str, list[str]] = {
    "debian_copyright": ["Free Software Foundation, Inc., Boston, MA  02110-1301  USA"],
    "copyright_years": ["Copyright (C) 1996-2019 Red Hat", "(c) 2001, 2003-2006 The Authors",
                        "Copyright 2019 2020 2021 2022 g10 Code GmbH"],
    "legal_clause": ["as defined in Clause 252.227-7013 (c) (1)"],
    "zip_plus4": ["Springfield, IL 62704-1234", "ZIP 94105-1804", "Pittsburgh, PA  15213-3890"],
    "postal_address": ["Ship to: Rua das Flores, 12, 20258-206 Rio de Janeiro / RJ", "ul. Polna 3, 00-625 Warszawa",
                       "Keizersgracht 1, 1015 CJ Amsterdam", "Tokyo 100-0001"],
    "date": ["on 2024-03-15", "Date: 15.03.2024", "last modified 03/15/2024 14:22:05", "2024-03-15T14:22:05",
             "20240315"],
    "version": ["version 2.14.0", "upgrade to v10.0.19045.3570", "Linux 6.1.0-13-amd64", "5.4.9.11+deb12u1",
                "7.3.1.3"],
    "ip_like_version": ["release 4.2.1.0", "firmware version 17.10.14.17", "build 192.168.0.1 is out",
                        "bump to 1.10.2.3"],
    "isbn": ["ISBN 978-3-16-148410-0", "isbn: 0-306-40615-2", "(7-244-07926-5)", "(0-585-41792-X)"],
    "order_number": ["Order #2023-000123-45", "order number 2016-922794-64", "Invoice 620-4317704-5071433 is attached",
                     "PO 4500123456"],
    "part_number": ["P/N 555-0147-22", "part no. 12-3456-7890", "SKU 4417 220 118", "replace with part 800-5550-19"],
    "hash": ["commit 9fceb02d0ae598e95dc970b74767f19372d61af8", "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7",
             "id 3f2a9c1", "063238da-1a1f-43f9-96a1-79fa50f96cd4"],
    "amount": ["total 1,234,567.89", "USD 4,500,000.00", "666 721,64 EUR"],
    "time": ["at 14:22:05", "23:59:59 UTC"],
    "mac_address": ["MAC 00:1a:2b:3c:4d:5e", "hwaddr 44:a9:a8:5e:7f:43"],
    "coordinates": ["located at 73.7942785, 97.389341", "GPS -44.6018965, 128.990855"],
    "unix_time": ["ts=1700000000", "timestamp 1625638116000"],
    "tracking_number": ["tracking 3908 1869 7613 4787 6669", "parcel 6761 1413 5343 shipped"],
}


def test_every_benchmark_family_has_hand_written_cases() -> None:
    assert set(LOOKALIKE_TEXTS) == set(LOOKALIKES)


@pytest.mark.parametrize(("family", "text"), [(f, t) for f, texts in LOOKALIKE_TEXTS.items() for t in texts])
def test_lookalikes_stay_untouched(family: str, text: str) -> None:
    assert Redactor(ALL).redact(text) == text, family


@pytest.mark.parametrize(("kind", "text", "value"), [
    (PiiType.EMAIL, "Jane <jane.doe+work@mail.example.org>", "jane.doe+work@mail.example.org"),
    (PiiType.PHONE, "Call me at (212) 555-0147 tomorrow.", "(212) 555-0147"),
    (PiiType.PHONE, "Tel.: +44 20 7946 0958", "+44 20 7946 0958"),
    (PiiType.PHONE, "+49 (0) 30 901820", "+49 (0) 30 901820"),
    (PiiType.PHONE, "+33 1 83 41 77 76", "+33 1 83 41 77 76"),
    (PiiType.PHONE, "080-9141-7776", "080-9141-7776"),
    (PiiType.PHONE, "206.269.0743x9150", "206.269.0743x9150"),
    (PiiType.PHONE, "mobile 0246578328", "0246578328"),
    (PiiType.PHONE, "Tel. no. 020 7946 0958", "020 7946 0958"),
    (PiiType.PHONE, "Pittsburgh, PA  15213-3890, (412) 268-4387", "(412) 268-4387"),
    (PiiType.IBAN, "IBAN: DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    (PiiType.IBAN, "account GB29NWBK60161331926819", "GB29NWBK60161331926819"),
    (PiiType.CREDIT_CARD, "card number 4111 1111 1111 1111", "4111 1111 1111 1111"),
    (PiiType.CREDIT_CARD, "Paid with 378282246310005 last week.", "378282246310005"),
    (PiiType.CREDIT_CARD, "CC: 3714 496353 98431", "3714 496353 98431"),
    (PiiType.CREDIT_CARD, "card no. 5555 5555 5555 4444", "5555 5555 5555 4444"),
    (PiiType.IP_ADDRESS, "Login from 203.0.113.77 failed.", "203.0.113.77"),
    (PiiType.IP_ADDRESS, "host=10.0.0.12", "10.0.0.12"),
    (PiiType.IP_ADDRESS, "client 2001:db8::8a2e:370:7334 connected", "2001:db8::8a2e:370:7334"),
])
def test_each_pii_type_is_still_redacted(kind: PiiType, text: str, value: str) -> None:
    redactor = Redactor(ALL)
    assert redactor.redact(text) == text.replace(value, f"<{kind.value.upper()}>", 1)
    assert redactor.counts[kind.value] >= 1


def test_a_fixed_seed_faker_sample_meets_the_precision_target() -> None:
    redactor = Redactor(ALL)
    samples = labelled_corpus(n_per_family=30, seed=11)
    tallies = score(samples, lambda text: [Span(m.start, m.end, m.kind) for m in redactor.find(text)])
    for kind, tally in tallies.items():
        assert tally.precision >= 0.98, (kind, tally)
        assert tally.recall >= 0.9, (kind, tally)  # and still finds what it is there for
