"""Cheap features of a (new prompt, cached prompt) pair, for deciding whether the cached answer may be
replayed.

Why not cosine alone: a sentence encoder puts "a man plays a flute" next to "a man plays a guitar",
and "the rate rose 2%" next to "the rate rose 5%"; for a response cache such a near miss is worse
than a miss. So a hit also needs the same numbers and the same negation, and a small logistic
verifier weighs the cosine against how many content words the two prompts do not share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np


def _vocabulary(words: str) -> frozenset[str]:
    return frozenset(words.split())


NEGATIONS = _vocabulary(
    "not no never none nobody nothing neither nor nowhere without cannot can't won't don't doesn't "
    "didn't isn't aren't wasn't weren't shouldn't wouldn't couldn't hasn't haven't hadn't n't"
)
STOPWORDS = _vocabulary(
    "a an the of to in on at for by with from and or but is are was were be been being it its this that "
    "these those as into onto over under up down out off than then there here he she they we you i me "
    "him her them us my your his their our has have had do does did will would can could should may "
    "might must shall 's"
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

# Words that pin an answer down like a number does: "stocks close lower Wednesday" is not "higher Friday".
PINNED = _vocabulary(
    "monday tuesday wednesday thursday friday saturday sunday january february march april june july "
    "august september october november december today yesterday tomorrow higher lower up down rise rises "
    "fall falls more less first last"
)
# More content words than this in one turn and not the other and the pair is refused: an added detail
# ("two bald eagles", "a dark brown horse") is what most wrong hits had left. Chosen by 5-fold
# cross-validation on the training split (2: precision 0.94; 3: 0.93; 4: 0.92; no limit: 0.91).
MAX_DIFFERENT_WORDS = 2
FEATURES = ("cosine", "jaccard", "content_diff", "extra_words", "name_diff", "length_ratio")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def numbers(text: str) -> frozenset[str]:
    return frozenset(n.replace(",", "") for n in _NUMBER.findall(text))


def negations(text: str) -> frozenset[str]:
    found = {w for w in words(text) if w in NEGATIONS or w.endswith("n't")}
    return frozenset({"not"} if found else set())


def names(text: str) -> frozenset[str]:
    """Capitalised words not at the start of the text: people, places, products."""
    tokens = _WORD.findall(text)
    return frozenset(t.lower() for t in tokens[1:] if t[:1].isupper() and t.lower() not in STOPWORDS)


def stems(text: str) -> frozenset[str]:
    """Content words cut to five letters: "runs" and "running", "Afghan" and "Afghanistan" agree."""
    return frozenset(w[:5] for w in words(text) if w not in STOPWORDS)


# Dates as written, in order: "2024-05-01" and "2024-01-05" have the same numbers but not the same day.
_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b|\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?"
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?(?:\s+\d{4})?\b|"
    r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?\b(?:,?\s+\d{4})?",
    re.IGNORECASE,
)
_MONTHS_AND_DAYS = _vocabulary(
    "monday tuesday wednesday thursday friday saturday sunday january february march april june july "
    "august september october november december today yesterday tomorrow tonight weekend"
)
# A code identifier as a programmer writes it: in backticks, snake_case, camelCase or PascalCase with
# two humps, dotted or scoped paths (os.path.join, std::vector, src/main.py), a call (sort()) or a
# command-line flag (--verbose). Compared case-sensitively: code is.
_IDENTIFIER = re.compile(
    r"`[^`\n]+`"
    r"|\b[A-Za-z_]\w*(?:(?:\.|::|->)[A-Za-z_]\w*)+(?:\(\))?"
    r"|\b\w*_\w+\b"
    r"|\b[a-z]+[A-Z]\w*\b"
    r"|\b[A-Z][a-z0-9]+[A-Z][a-z0-9]+\w*\b"
    r"|\b\w+\(\)"
    r"|(?<!\S)--?[A-Za-z][\w-]*"
)
_SENTENCE_ENDS = frozenset(".!?:;\n\"'([")


def dates(text: str) -> tuple[str, ...]:
    """Dates written out (numeric or with a month name), and the day, month and relative-day words."""
    found = [" ".join(m.group(0).lower().replace(",", " ").split()) for m in _DATE.finditer(text)]
    return (*found, *sorted({w for w in words(text) if w in _MONTHS_AND_DAYS}))


def identifiers(text: str) -> frozenset[str]:
    """Abbreviations written with dots (U.S., e.g.) are not identifiers: every part is one letter."""
    found = (m.group(0).strip("`") for m in _IDENTIFIER.finditer(text))
    return frozenset(i for i in found if any(len(part) > 1 for part in re.split(r"\W+", i)))


def entities(text: str) -> frozenset[str]:
    """Named entities without an NER model (none is installed): capitalised words that do not start a
    sentence, and all-caps or mixed-case words (IBM, iPhone) wherever they are. A sentence's first word
    is left out because every sentence starts with a capital ("Paris is ..." is therefore not seen), and
    in a text written in Title Case (a headline) only the all-caps and mixed-case words count."""
    tokens = [m for m in _WORD.finditer(text) if m.group(0)[:1].isalpha() and len(m.group(0)) > 1]
    content = [m.group(0) for m in tokens[1:] if m.group(0).lower() not in STOPWORDS]
    title_case = len(content) >= 3 and sum(t[0].isupper() for t in content) >= 0.6 * len(content)
    found = set()
    for m in tokens:
        token = m.group(0)
        if token.lower() in STOPWORDS:
            continue
        named = token[0].isupper() and not title_case and not _starts_sentence(text, m.start())
        if named or any(c.isupper() for c in token[1:]):
            found.add(token.lower())
    return frozenset(found)


def _starts_sentence(text: str, at: int) -> bool:
    """Whether the word at ``at`` opens a sentence, a line, a quote or a bracket (scanning back over
    spaces only, so a long prompt costs one step per word, not one per character)."""
    i = at - 1
    while i >= 0 and text[i] in " \t\r":
        i -= 1
    return i < 0 or text[i] in _SENTENCE_ENDS


def _same_name(entity: str, word: str) -> bool:
    """One name in two forms: the same word, or one a prefix of the other of at least four letters
    ("Afghan" and "Afghanistan", "Russia" and "Russia's"; not "Austria" and "Australia")."""
    short, long = sorted((entity, word), key=len)
    return short == long or (len(short) >= 4 and long.startswith(short))


def _unnamed(one: str, other: str) -> bool:
    """Whether ``one`` names an entity that ``other`` does not name in any case or form."""
    there = set(words(other))
    return any(not any(_same_name(e, w) for w in there) for e in entities(one))


# Why a guard refusal was made, as counted by ``coe eval cache`` and ``coe_cache_lookups_total``.
REFUSALS = ("date", "number", "direction", "negation", "identifier", "entity", "words")


def refusal(a: str, b: str) -> tuple[str, str] | None:
    """(kind, why) the two may not share an answer whatever their similarity, or None."""
    if dates(a) != dates(b):
        return "date", "different dates"
    if numbers(a) != numbers(b):
        return "number", "different numbers"
    if {w for w in words(a) if w in PINNED} != {w for w in words(b) if w in PINNED}:
        return "direction", "different directions or order words"
    if negations(a) != negations(b):
        return "negation", "one is negated"
    if identifiers(a) != identifiers(b):
        return "identifier", "different code identifiers"
    if _unnamed(a, b) and _unnamed(b, a):  # one name for another; an added name is an added word
        return "entity", "different named entities"
    different = len(stems(a) ^ stems(b))
    if different > MAX_DIFFERENT_WORDS:
        return "words", f"{different} content words differ (at most {MAX_DIFFERENT_WORDS})"
    return None


def guard(a: str, b: str) -> str | None:
    """Why the two may not share an answer whatever their similarity (None: no objection)."""
    found = refusal(a, b)
    return None if found is None else found[1]


def pair_features(cosine: float, a: str, b: str) -> np.ndarray:
    wa, wb = words(a), words(b)
    sa, sb = set(wa), set(wb)
    jaccard = len(sa & sb) / max(len(sa | sb), 1)
    ca, cb = sa - STOPWORDS, sb - STOPWORDS
    content_diff = len(ca ^ cb) / max(len(ca | cb), 1)
    ta, tb = stems(a), stems(b)
    extra_words = float(len(ta ^ tb))
    na, nb = names(a), names(b)
    name_diff = len(na ^ nb) / max(len(na | nb), 1)
    length_ratio = min(len(wa), len(wb)) / max(len(wa), len(wb), 1)
    return np.array([cosine, jaccard, content_diff, extra_words, name_diff, length_ratio], dtype=np.float64)


def feature_matrix(cosines: Sequence[float], pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    return np.stack([pair_features(c, a, b) for c, (a, b) in zip(cosines, pairs, strict=True)])
