"""PII detection with Presidio's pattern recognizers, and redaction that keeps a message readable.

Why only pattern recognizers: they are regular expressions plus checksums (Luhn for cards, mod-97
for IBANs, phonenumbers for phones) and run offline in well under a millisecond per message.
Presidio's ``AnalyzerEngine`` would build a spaCy NLP engine and, without an installed model, try to
download ``en_core_web_lg``; CoE never builds it. The recognizers are asked directly, without NLP
artefacts, so their context words do not raise scores (Presidio's context enhancer needs lemmas) and
the NER types (PERSON, LOCATION, ORGANIZATION, NRP, DATE_TIME) are not available: asking for one is a
config error naming it (coe/config/signals.py).

Redaction replaces each span with ``<TYPE>`` (``<EMAIL_ADDRESS>``); the trace keeps the message index,
the type and the offsets into the original text, never the value. The answer is not un-redacted: the
expert never saw the values, so nothing it says can be mapped back safely.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coe.errors import CoEError

_LOCK = threading.Lock()
_RECOGNIZERS: dict[tuple[str, ...], list[Any]] = {}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    score: float


def _recognizers(types: Sequence[str]) -> list[Any]:
    """Presidio's predefined recognizers for ``types`` that need no NLP engine (built once)."""
    key = tuple(sorted(types))
    with _LOCK:
        if key not in _RECOGNIZERS:
            try:
                from presidio_analyzer import RecognizerRegistry
            except ImportError:
                raise CoEError("signals.pii needs Presidio's analyzer: pip install 'coe[signals]'") from None
            _offline_email_check()
            registry = _registry(RecognizerRegistry)
            for extra in _coe_recognizers():
                registry.add_recognizer(extra)
            found = [
                r
                for r in registry.recognizers
                if set(r.supported_entities) & set(types) and type(r).__name__ not in _NLP_RECOGNIZERS
            ]
            _RECOGNIZERS[key] = found
        return _RECOGNIZERS[key]


def _registry(cls: Any) -> Any:
    """Presidio's English predefined recognizers; its warnings about the other languages' ones it
    leaves out are noise here."""
    import logging

    logger = logging.getLogger("presidio-analyzer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        registry = cls(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"])
    finally:
        logger.setLevel(level)
    return registry


def _offline_email_check() -> None:
    """Presidio's email recognizer checks the domain with ``tldextract.extract``, whose default
    extractor downloads the Public Suffix List on first use. CoE runs offline: point the recognizer at
    an extractor that reads the snapshot bundled with tldextract and caches nothing."""
    import types

    import tldextract
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    if not isinstance(email_recognizer.tldextract, types.SimpleNamespace):  # type: ignore[attr-defined]
        offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        email_recognizer.tldextract = types.SimpleNamespace(extract=offline)  # type: ignore[attr-defined,assignment]


# A phone number right after a word that announces one. Presidio's own phone recognizer (the
# phonenumbers library) finds numbers with an area or country code; local numbers ("451 5986",
# "72 128 827") it leaves, and without NLP artefacts its context words cannot help. At least 7 digits.
# The words are those of the train side of pii_presidio's template split (coe.signals.evaluation.
# pii_in_validation: "Phone:", "Mobile:", "Desk:", "Fax:", "call me on", "answering at", "my
# registered") and the synonyms of phone; two phrases first written from held-out templates ("call
# me at", "messages to") were taken out so that `coe eval pii --split validation` measures text the
# rules never saw.
_PHONE_CONTEXT = (
    r"(?i)(?<=\b(?:phone|mobile|cell|tel|telephone|fax|desk|whatsapp|phone\s+number|"
    r"call(?:\s+me)?\s+on|answering\s+at|registered)\s*:?\s*)"
    r"(?=(?:[ ().+-]*\d){7})\+?\(?\d[\d ().-]{4,17}\d(?:\s?(?:x|ext\.?)\s?\d{1,5})?\b"
)
# 12 to 19 digits, optionally in groups, that pass the Luhn check. Presidio's card pattern knows the
# issuers' prefixes of its time only (not Maestro's 12 digits, 19-digit Visa or 2-series Mastercard).
_CARD_DIGITS = r"\b(?:\d[ -]?){11,18}\d\b"


def _coe_recognizers() -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer

    class LuhnCardRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return _luhn("".join(c for c in pattern_text if c.isdigit()))

    return [
        LuhnCardRecognizer(
            supported_entity="CREDIT_CARD",
            name="CoeLuhnCardRecognizer",
            patterns=[Pattern("card digits (Luhn)", _CARD_DIGITS, 0.5)],
        ),
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="CoeContextPhoneRecognizer",
            patterns=[Pattern("phone after a phone word", _PHONE_CONTEXT, 0.45)],
        ),
    ]


def _luhn(digits: str) -> bool:
    if not 12 <= len(digits) <= 19:
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


# Recognizers that only read NLP artefacts (spaCy's entities); without a model they find nothing.
_NLP_RECOGNIZERS = {"SpacyRecognizer", "StanzaRecognizer", "TransformersRecognizer"}


def supported_types() -> set[str]:
    """Every entity type the installed Presidio can find without an NLP model (for the test that
    keeps coe.config.signals.PATTERN_TYPES honest)."""
    from presidio_analyzer import RecognizerRegistry

    registry = _registry(RecognizerRegistry)
    return {
        e
        for r in registry.recognizers
        if type(r).__name__ not in _NLP_RECOGNIZERS
        for e in r.supported_entities
    }


def find(text: str, types: Sequence[str], min_score: float = 0.0) -> list[Span]:
    """The PII spans of ``text``, sorted by offset, overlaps resolved (higher score, then longer wins)."""
    if not text:
        return []
    wanted = list(types)
    spans: list[Span] = []
    for recognizer in _recognizers(wanted):
        entities = [e for e in recognizer.supported_entities if e in wanted]
        for result in recognizer.analyze(text, entities, None) or []:
            if result.score >= min_score and result.entity_type in wanted:
                spans.append(Span(result.start, result.end, result.entity_type, float(result.score)))
    return _resolve(spans)


def _resolve(spans: list[Span]) -> list[Span]:
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def redact(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each span replaced by ``<TYPE>``."""
    out, at = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[at : span.start])
        out.append(f"<{span.type}>")
        at = span.end
    out.append(text[at:])
    return "".join(out)
