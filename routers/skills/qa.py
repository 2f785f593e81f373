"""Validation questions with gold answers, the prompts experts see, and the graders.

Reads the common shapes without configuration: MMLU (``question`` + ``choices`` + letter ``answer``,
``subject``), MedMCQA (options inline, ``gold_answer``), GSM8K (``answer`` ending in "#### N",
``numeric_answer``); other files name their fields. Every bad row is reported as file:line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from coe.answers import LETTERS, extract_choice, extract_number, normalize_number, normalize_text
from coe.data.jsonl import raise_problems, read_jsonl
from coe.evaluation.data import DataError

Grader = Literal["mc", "number", "exact"]
GRADERS: tuple[Grader, ...] = ("mc", "number", "exact")

# Measured on SmolLM2-135M (12 MMLU/MedMCQA questions): "end with 'The answer is (X)'" got the
# letter X copied back; asking which option is correct got a letter in 11 of 12 replies.
INSTRUCTIONS: dict[Grader, str] = {
    "mc": "Which option is correct? Reply with its letter, then one sentence of explanation.",
    "number": "Work it out step by step, then give the final number after 'The answer is'.",
    "exact": "",
}
_TEXT_FIELDS = ("question", "prompt", "text")
_GOLD_FIELDS: dict[Grader, tuple[str, ...]] = {
    "mc": ("gold_answer", "answer", "label"),
    "number": ("numeric_answer", "gold_answer", "answer"),
    "exact": ("gold_answer", "answer", "label"),
}
_CATEGORY_FIELDS = ("subject", "category", "task", "eval_name", "domain")


class QAItem(BaseModel):
    id: str
    question: str
    gold: str
    category: str
    prompt: str  # what experts are asked: the question, its options, the answer-format instruction
    grader: Grader  # how its answers are graded; no default, so no reader can forget it


def gold_value(grader: Grader, raw: object) -> str | None:
    text = str(raw).strip()
    if grader == "mc":
        return text.upper() if len(text) == 1 and text.upper() in LETTERS else extract_choice(text, LETTERS)
    if grader == "number":
        return extract_number(text) if "####" in text else normalize_number(text)
    return normalize_text(text) or None


def grade(grader: Grader, reply: str, gold: str) -> bool:
    if grader == "mc":
        return extract_choice(reply, LETTERS) == gold
    if grader == "number":
        return extract_number(reply) == gold
    return normalize_text(reply) == gold


def _field(row: dict[str, object], given: str | None, candidates: Sequence[str]) -> str | None:
    if given is not None:
        return given if given in row else None
    return next((f for f in candidates if row.get(f) not in (None, "")), None)


def read_items(
    paths: Sequence[Path],
    grader: Grader,
    text_field: str | None = None,
    gold_field: str | None = None,
    category_field: str | None = None,
    limit: int | None = None,
) -> list[QAItem]:
    """``limit`` keeps the first N items of each file (so every file is represented)."""
    items: list[QAItem] = []
    problems: list[str] = []
    for path in paths:
        taken = 0
        for n, row in read_jsonl(path, DataError):
            if limit is not None and taken >= limit:
                break
            item = _item(row, path, n, grader, text_field, gold_field, category_field, problems)
            if item is not None:
                items.append(item)
                taken += 1
    raise_problems(problems, DataError)
    if not items:
        raise DataError(f"{', '.join(map(str, paths))}: no questions")
    return items


def _item(
    row: dict[str, object],
    path: Path,
    n: int,
    grader: Grader,
    text_field: str | None,
    gold_field: str | None,
    category_field: str | None,
    problems: list[str],
) -> QAItem | None:
    text_key = _field(row, text_field, _TEXT_FIELDS)
    gold_key = _field(row, gold_field, _GOLD_FIELDS[grader])
    if text_key is None or gold_key is None:
        missing = "question text" if text_key is None else "gold answer"
        problems.append(f"{path}:{n}: no {missing} field (give --text-field / --gold-field)")
        return None
    gold = gold_value(grader, row[gold_key])
    if gold is None:
        problems.append(f"{path}:{n}: {gold_key!r} is not a {grader} answer: {str(row[gold_key])[:40]!r}")
        return None
    question = str(row[text_key]).strip()
    choices = row.get("choices")
    if isinstance(choices, list) and choices:
        question += "\n" + "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices[: len(LETTERS)]))
    category_key = _field(row, category_field, _CATEGORY_FIELDS)
    category = str(row[category_key]) if category_key else path.stem
    prompt = f"{question}\n\n{INSTRUCTIONS[grader]}".strip()
    return QAItem(
        id=str(row.get("id", f"{path.stem}-{n}")),
        question=question,
        gold=gold,
        category=category,
        prompt=prompt,
        grader=grader,
    )
