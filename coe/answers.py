"""Final answers in free text: option letters and numbers, extracted and voted on.

One module for everything that compares answers: the vote aggregator, the graders of `coe profile`,
and the offline evaluation. If they each parsed answers their own way, a profile would grade an
answer "right" that the vote then counts as a different answer.

Extraction is deliberately strict for letters (a sentence starting with "A boat..." is not option A)
and looks for explicit final-answer markers before it falls back to anything looser. ``None`` means
"no answer could be extracted", which callers treat as "cannot vote", never as a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

Kind = Literal["choice", "number"]

LETTERS = "ABCDEFGHIJ"
_L = f"[{LETTERS}]"

# Options listed in a prompt: "A) ...", "(B) ...", "C. ..." at line start, or "(A) x (B) y" / "A) x B) y"
# inline.
_OPTION_LINE = re.compile(rf"(?m)^\s*\(?({_L})[).:]\s+\S")
_OPTION_INLINE = re.compile(rf"(?:\(({_L})\)|(?:^|\s)({_L})\))\s+\S")

# Explicit markers, most specific first; the last occurrence in the text wins (models restate).
_CHOICE_MARKERS = (
    re.compile(rf"\\boxed\{{\s*\(?({_L})\)?\s*\}}"),
    re.compile(rf"(?i:answer)(?:\s+(?i:is|would be|should be))?\s*[:\-]?\s*\(?({_L})\)?(?![A-Za-z])"),
    re.compile(rf"(?i:option|choice)(?:\s+(?i:is))?\s*[:\-]?\s*\(?({_L})\)?(?![A-Za-z])"),
)
# The whole reply is a letter, or starts with one followed by ")" / "." / ":" ("B) wet palms").
_CHOICE_ALONE = re.compile(rf"^\W*\(?({_L})\)?\W*$")
_CHOICE_LEAD = re.compile(rf"^\s*\(?({_L})[).:](?:\s|$)")

_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_NUMBER_MARKERS = (
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}"),
    re.compile(rf"(?i:answer)(?:\s+is)?\s*[:=]?\s*(?:\*\*)?\s*({_NUMBER})"),
)
_ANY_NUMBER = re.compile(_NUMBER)


def option_letters(prompt: str) -> str:
    """The option letters a prompt offers ("ABCD"), or "" when it lists no options."""
    found = set(_OPTION_LINE.findall(prompt))
    if len(found) < 2:
        found = {a or b for a, b in _OPTION_INLINE.findall(prompt)}
    if len(found) < 2 or "A" not in found:
        return ""
    return "".join(sorted(found))


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The option letter a reply commits to, or None. Only letters in ``letters`` count."""
    clean = text.replace("*", "").strip()
    for pattern in _CHOICE_MARKERS:
        hits = [m for m in pattern.findall(clean) if m in letters]
        if hits:
            return str(hits[-1])
    for pattern in (_CHOICE_ALONE, _CHOICE_LEAD):
        match = pattern.match(clean)
        if match and match.group(1) in letters:
            return match.group(1)
    return None


def normalize_number(raw: str) -> str | None:
    """ "$1,234.50" -> "1234.5", "18.0" -> "18"; None when it is not a number."""
    cleaned = raw.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value.is_integer():
        return str(int(value))
    return f"{value:.6g}"


def extract_number(text: str, loose: bool = True) -> str | None:
    """The final number of a reply: after "####", in \\boxed{}, after "answer is"; with ``loose``
    the last number anywhere in the text when there is no marker."""
    for pattern in _NUMBER_MARKERS:
        hits = pattern.findall(text)
        if hits:
            return normalize_number(hits[-1])
    if loose:
        hits = _ANY_NUMBER.findall(text)
        if hits:
            return normalize_number(hits[-1])
    return None


def extract(text: str, kind: Kind | None, letters: str = "ABCD") -> str | None:
    """One entry point: ``choice`` -> letter, ``number`` -> normalised number, ``None`` -> nothing."""
    if kind == "choice":
        return extract_choice(text, letters or "ABCD")
    if kind == "number":
        return extract_number(text)
    return None


def extract_for_prompt(prompt: str, text: str, kind: Kind | Literal["auto"] = "auto") -> str | None:
    """Extract with the kind the prompt implies: options listed -> their letter; otherwise only an
    explicitly marked number ("#### 18", "The answer is 18"), so free text never yields a vote."""
    if kind == "auto":
        letters = option_letters(prompt)
        if letters:
            return extract_choice(text, letters)
        return extract_number(text, loose=False)
    return extract(text, kind, option_letters(prompt) or "ABCD")


def normalize_text(text: str) -> str:
    """For the ``exact`` grader: case, surrounding punctuation and inner whitespace do not matter."""
    return " ".join(re.sub(r"[^\w\s.-]", " ", text.lower()).split()).strip(" .")


Votes = dict[str, list[str]]


def majority(
    extracted: Sequence[tuple[str, str | None]], weights: dict[str, float]
) -> tuple[str | None, Votes]:
    """The most common extracted answer; a tie goes to the answer whose voters carry the most router
    weight, then to the one of the highest-weighted voter. Returns (answer or None, votes by answer)."""
    votes: Votes = {}
    for voter, answer in extracted:
        if answer is not None:
            votes.setdefault(answer, []).append(voter)
    if not votes:
        return None, {}

    def strength(answer: str) -> tuple[int, float, float]:
        voters = votes[answer]
        return len(voters), sum(weights.get(v, 0.0) for v in voters), max(weights.get(v, 0.0) for v in voters)

    return max(votes, key=strength), votes
