"""Labelled prompts from JSONL, with errors that name the file and line (a bad row never crashes)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
from coe.errors import CoEError


class DataError(CoEError):
    """A labelled data file that cannot be used; the message names file and line."""


class LabelledPrompts(BaseModel):
    texts: list[str]
    labels: list[str]
    source: str

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def read_labelled(
    path: Path,
    text_field: str = "text",
    label_field: str = "domain",
    known_labels: list[str] | None = None,
    max_chars: int | None = None,
) -> LabelledPrompts:
    """Read every row; collect all problems and raise one DataError listing them as ``file:line: ...``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    texts: list[str] = []
    labels: list[str] = []
    problems: list[str] = []
    for n, row in jsonl_rows(path, read_utf8(path, DataError), problems):
        missing = [k for k in (text_field, label_field) if k not in row]
        if missing:
            problems.append(f"{path}:{n}: missing field {', '.join(repr(m) for m in missing)}")
            continue
        text, label = row[text_field], row[label_field]
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{path}:{n}: {text_field!r} is empty")
            continue
        if not isinstance(label, str) or not label:
            problems.append(f"{path}:{n}: {label_field!r} must be a non-empty string")
            continue
        if known_labels is not None and label not in known_labels:
            expected = ", ".join(known_labels)
            problems.append(f"{path}:{n}: unknown label {label!r}; expected one of: {expected}")
            continue
        texts.append(text[:max_chars] if max_chars else text)
        labels.append(label)
    raise_problems(problems, DataError)
    if not texts:
        raise DataError(f"{path}: no labelled prompts")
    return LabelledPrompts(texts=texts, labels=labels, source=str(path))
