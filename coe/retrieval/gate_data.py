"""Labelled "needs retrieval" questions, a deterministic train/test split, and the gate's metrics.

Why the split is keyed on the question text: the same question must land on the same side in every
run and in every file (a reworded copy in another data set goes where its text goes), so a gate is
never tuned on a question it is later scored on. The salt keeps this split independent of the
shared data's own held-out split.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
from coe.errors import CoEError

Split = Literal["all", "train", "test"]
_SALT = "coe-gate-split:"


class GateDataError(CoEError):
    """A labelled file that cannot be used; the message names file and line."""


class GateExample(BaseModel):
    text: str
    label: bool
    source: str
    gold: list[str] = []  # ids of the documents that answer it, when the data says
    answers: list[str] = []


def split_of(text: str, test_percent: int) -> Literal["train", "test"]:
    key = re.sub(r"[\W_]+", " ", text.lower()).strip()
    bucket = int(hashlib.sha1(f"{_SALT}{key}".encode()).hexdigest(), 16) % 100
    return "test" if bucket < test_percent else "train"


def _label(value: object, positive: str | None) -> bool | None:
    if positive is not None:
        return str(value) == positive
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    return None


def read_gate_data(
    paths: Sequence[Path],
    text_field: str = "question",
    label_field: str = "needs_retrieval",
    positive: str | None = None,
    source_field: str = "source",
    split: Split = "all",
    test_percent: int = 30,
) -> list[GateExample]:
    """Rows of every file; ``positive`` names the label value that means "retrieve" (for string labels
    such as SKR's ``ir_better``), otherwise labels must be 0/1 or true/false. A row without
    ``source_field`` takes its file's name as source."""
    examples: list[GateExample] = []
    problems: list[str] = []
    for path in paths:
        if not path.is_file():
            raise GateDataError(f"{path}: no such file")
        for n, row in jsonl_rows(path, read_utf8(path, GateDataError), problems):
            text = row.get(text_field)
            label = _label(row.get(label_field), positive) if label_field in row else None
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{path}:{n}: {text_field!r} missing or empty")
            elif label is None:
                want = f"any value (positive: {positive!r})" if positive else "0/1 or true/false"
                problems.append(f"{path}:{n}: {label_field!r} must be {want}, got {row.get(label_field)!r}")
            elif split == "all" or split_of(text, test_percent) == split:
                examples.append(
                    GateExample(
                        text=text,
                        label=label,
                        source=str(row.get(source_field) or path.stem),
                        gold=[str(g) for g in row.get("gold_doc_ids") or []],
                        answers=[str(a) for a in row.get("answers") or row.get("golden_answers") or []],
                    )
                )
    raise_problems(problems, GateDataError)
    if not examples:
        raise GateDataError(f"{', '.join(map(str, paths))}: no labelled questions (split {split!r})")
    return examples


class GateMetrics(BaseModel):
    """``precision``/``recall``/``f1`` are null where undefined (nothing retrieved, no positive)."""

    n: int
    positives: int
    retrieved: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float
    retrieve_rate: float
    saved_vs_always: float  # share of always-retrieve's retrievals this gate skips: 1 - retrieve_rate


def binary_metrics(predicted: Sequence[bool], gold: Sequence[bool]) -> GateMetrics:
    tp = sum(p and g for p, g in zip(predicted, gold, strict=True))
    fp = sum(p and not g for p, g in zip(predicted, gold, strict=True))
    fn = sum(g and not p for p, g in zip(predicted, gold, strict=True))
    n = len(gold)
    tn = n - tp - fp - fn
    rate = (tp + fp) / n if n else 0.0
    return GateMetrics(
        n=n,
        positives=tp + fn,
        retrieved=tp + fp,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=_r(tp / (tp + fp)) if tp + fp else None,
        recall=_r(tp / (tp + fn)) if tp + fn else None,
        f1=_r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None,
        accuracy=_r((tp + tn) / n) if n else 0.0,
        retrieve_rate=_r(rate),
        saved_vs_always=_r(1 - rate),
    )


def best_threshold(scores: Sequence[float], gold: Sequence[bool]) -> float:
    """The cut that maximises F1 of ``score >= cut``; among equals, the highest (fewest retrievals).
    Cuts lie half-way between neighbouring distinct scores, so they generalise a little."""
    ranked = sorted(set(scores))
    cuts = [ranked[0] - 1e-6] + [(a + b) / 2 for a, b in itertools.pairwise(ranked)]
    cuts.append(ranked[-1] + 1e-6)
    best, best_f1 = cuts[0], -1.0
    for cut in cuts:
        f1 = binary_metrics([s >= cut for s in scores], gold).f1 or 0.0
        if f1 >= best_f1:
            best, best_f1 = cut, f1
    return round(best, 6)


def _r(x: float) -> float:
    return round(x, 4)
