"""PII redaction precision and recall per type, against Microsoft Presidio's analyzer, on one labelled corpus.

    .venv/bin/python benchmarks/bench_pii.py --quick    # 60 sentences per family, a few seconds
    .venv/bin/python benchmarks/bench_pii.py            # 400 per family
    .venv/bin/python benchmarks/bench_pii.py --errors 20  # also print 20 of our mistakes
    .venv/bin/python benchmarks/bench_pii.py --debian     # also redact /usr/share/doc/*/copyright (real text)

The corpus (`tests/support/pii_corpus.py`) is personal data made with Faker in 15 locales (e-mail
addresses, phone numbers, IBANs, card numbers, IPv4/IPv6 addresses, each in a few sentence templates)
mixed with look-alikes that are not personal data: Debian's `Boston, MA 02110-1301, USA`, ZIP+4 codes,
postal addresses, dates, versions, IP-like versions, ISBNs, order and part numbers, hashes, amounts,
times, MAC addresses, coordinates, timestamps, tracking numbers. Sentences are joined into documents
of six, so look-alikes sit next to personal data.

Caveat: the look-alike families and the redactor's rules were written by the same hand (two families,
copyright years and a DFARS clause number, came from what `--debian` found in real text), so the
corpus measures what the rules were meant to handle; `--debian` is the check on text nobody wrote
for it. A detection is right when it overlaps a labelled span of its type. Target for every type we redact:
precision >= 0.98 and recall >= Presidio's.

Presidio runs offline with its pattern recognizers only (EmailRecognizer, PhoneRecognizer,
IbanRecognizer, CreditCardRecognizer, IpRecognizer) called directly, without an NLP engine: its
AnalyzerEngine would load a spaCy model (en_core_web_lg, ~500 MB, downloaded on first use), and the
recognizers for these types are regular expressions, checksums and `phonenumbers` that need none of it
(the NLP engine only adds context words that raise scores). Every result is counted (score > 0), as
the analyzer returns them with its default threshold of 0.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "trainer_image"))
sys.path.insert(0, str(ROOT))

from tests.support.pii_corpus import Sample, Span, Tally, join_samples, labelled_corpus, score  # noqa: E402

from forge_trainer.config import PiiType  # noqa: E402
from forge_trainer.data.pii import Redactor  # noqa: E402

PRESIDIO_ENTITIES = {"EMAIL_ADDRESS": PiiType.EMAIL, "PHONE_NUMBER": PiiType.PHONE, "IBAN_CODE": PiiType.IBAN,
                     "CREDIT_CARD": PiiType.CREDIT_CARD, "IP_ADDRESS": PiiType.IP_ADDRESS}
PRECISION_TARGET = 0.98


def presidio_finder() -> Callable[[str], list[Span]]:
    """Presidio's pattern recognizers for our five types, offline."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    # EmailRecognizer asks tldextract for the public-suffix list, which it fetches from the internet by
    # default; the snapshot bundled with tldextract is the same check without the network
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())  # type: ignore[assignment]
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    recognizers = [EmailRecognizer(), PhoneRecognizer(), IbanRecognizer(), CreditCardRecognizer(), IpRecognizer()]

    def find(text: str) -> list[Span]:
        spans = []
        for r in recognizers:
            # pattern recognizers read no NLP artifacts (only context enhancement, which needs spaCy, does)
            for res in r.analyze(text, r.supported_entities, None):  # type: ignore[arg-type]
                if res.entity_type in PRESIDIO_ENTITIES and res.score > 0:
                    spans.append(Span(res.start, res.end, PRESIDIO_ENTITIES[res.entity_type]))
        return spans

    return find


def ours_finder() -> Callable[[str], list[Span]]:
    """Forge's redactor with every type on."""
    redactor = Redactor(list(PiiType))
    return lambda text: [Span(m.start, m.end, m.kind) for m in redactor.find(text)]


def documents(n_per_family: int, seed: int) -> list[Sample]:
    """The labelled corpus, shuffled into documents of six sentences."""
    sentences = labelled_corpus(n_per_family, seed)
    random.Random(seed).shuffle(sentences)
    return [join_samples(sentences[i:i + 6]) for i in range(0, len(sentences), 6)]


def main() -> int:
    """Print the per-type table; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 sentences per family instead of 400")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--errors", type=int, default=0, help="print this many of our mistakes")
    parser.add_argument("--debian", action="store_true",
                        help="also count our redactions in this machine's /usr/share/doc/*/copyright (real, unlabelled)")
    args = parser.parse_args()
    docs = documents(60 if args.quick else 400, args.seed)
    chars = sum(len(d.text) for d in docs)
    results: dict[str, dict[PiiType, Tally]] = {}
    errors: list[tuple[str, Sample, Span]] = []
    seconds: dict[str, float] = {}
    for name, finder in (("forge", ours_finder()), ("presidio", presidio_finder())):
        start = time.process_time()
        results[name] = score(docs, finder, errors if name == "forge" else None)
        seconds[name] = time.process_time() - start
    print(f"{len(docs)} documents, {chars / 1e6:.2f} MB, "
          f"{sum(len(d.spans) for d in docs)} labelled spans (seed {args.seed})")
    print(f"{'type':<12} {'forge P':>8} {'forge R':>8} {'presidio P':>11} {'presidio R':>11}  {'n':>5}  target")
    ok = True
    for kind in PiiType:
        f, p = results["forge"][kind], results["presidio"][kind]
        met = f.precision >= PRECISION_TARGET and f.recall >= p.recall
        ok &= met
        print(f"{kind.value:<12} {f.precision:>8.3f} {f.recall:>8.3f} {p.precision:>11.3f} {p.recall:>11.3f}  "
              f"{f.found + f.fn:>5}  {'met' if met else 'MISSED'}")
    print(f"CPU seconds: forge {seconds['forge']:.2f}, presidio {seconds['presidio']:.2f} "
          f"(ratio presidio/forge {seconds['presidio'] / max(seconds['forge'], 1e-9):.1f}x)")
    for what, sample, span in errors[:args.errors]:
        line_start = sample.text.rfind("\n", 0, span.start) + 1
        line_end = sample.text.find("\n", span.end)
        line = sample.text[line_start:line_end if line_end >= 0 else None]
        print(f"  {what} {span.kind.value:<11} {sample.text[span.start:span.end]!r:<32} in {line!r}")
    if args.debian:
        debian_copyright()
    return 0 if ok else 1


def debian_copyright() -> None:
    """Our redactions in Debian's copyright files, where ZIP+4 codes and year ranges abound and phone
    numbers are few; ZIP+4 codes among the phone hits should be 0."""
    files = sorted(Path("/usr/share/doc").glob("*/copyright"))
    redactor = Redactor(list(PiiType))
    zip4 = 0
    for f in files:
        text = f.read_text(errors="replace")
        zip4 += sum(bool(re.fullmatch(r"\d{5}-\d{4}", text[m.start:m.end])) for m in redactor.find(text)
                    if m.kind == PiiType.PHONE)
        redactor.redact(text)
    print(f"Debian copyright files: {len(files)}, redactions {redactor.counts}, ZIP+4 codes taken for phones: {zip4}")


if __name__ == "__main__":
    sys.exit(main())
