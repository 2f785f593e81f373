"""The files of ``coe batch``: input items (IN.jsonl) and the result log (OUT.jsonl).

The result log is also the resume state: one line per finished item, written with one ``write`` and
flushed as the item finishes. Reopened, it tells which ids are done; a last line cut off by a kill is
dropped (its item runs again), so every id ends up in the file exactly once. An exclusive lock keeps
two runs from appending to the same file.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coe.errors import CoEError
from coe.types import Message, Request, Trace


class BatchInputError(CoEError):
    """Batch input or output files that cannot be used; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class BatchItem(BaseModel):
    """One input line: ``id`` and ``prompt`` or ``messages``; ``expert`` pins an expert (no routing),
    ``params`` overrides generation settings, ``meta`` is copied to the result as is."""

    model_config = ConfigDict(extra="forbid")

    id: str | int
    prompt: str | None = None
    messages: list[Message] | None = None
    expert: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> BatchItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty")
        return self

    @property
    def key(self) -> str:
        return str(self.id)

    def request(self, defaults: dict[str, Any]) -> Request:
        messages = self.messages or [Message(role="user", content=self.prompt or "")]
        return Request(messages=messages, expert=self.expert, params={**defaults, **self.params}, id=self.key)


class BatchResult(BaseModel):
    """One output line: ``id``, ``expert``, ``answer`` or ``error``, ``trace`` (and ``meta`` if given)."""

    id: str | int
    expert: str | None = None
    answer: str | None = None
    error: str | None = None
    trace: Trace | None = None
    meta: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True) + "\n"


def as_item(value: BatchItem | dict[str, Any] | str, index: int) -> BatchItem:
    """Library input: an item, a dict of its fields, or a bare prompt (its id is its index)."""
    if isinstance(value, BatchItem):
        return value
    if isinstance(value, str):
        return BatchItem(id=index, prompt=value)
    return BatchItem.model_validate(value)


def read_items(path: Path) -> tuple[list[BatchItem], list[str]]:
    """Parse IN.jsonl. A bad line is reported as ``file:line: why`` and skipped; the rest run."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError([f"{path}: cannot read: {exc}"]) from None
    items: list[BatchItem] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    # split("\n") as coe.data.jsonl does: a prompt may hold a raw U+2028 or U+0085, where splitlines() cuts.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = BatchItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); skipped")
            continue
        except ValidationError as exc:
            problems.append(f"{path}:{number}: {_why(exc)}; skipped")
            continue
        if item.key in first_line:
            problems.append(
                f"{path}:{number}: duplicate id {item.id!r} (first on line {first_line[item.key]}); skipped"
            )
            continue
        first_line[item.key] = number
        items.append(item)
    return items, problems


def _why(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; expected: {', '.join(BatchItem.model_fields)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


class ResultLog:
    """OUT.jsonl, opened for appending; ``done`` holds the results already in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, BatchResult] = {}
        self.problems: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise BatchInputError([f"{path}: another coe batch is writing to it"]) from None
        self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as fh:
            data = fh.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a line cut off by a kill: its item runs again
            os.ftruncate(self._fd, complete)
            self.problems.append(
                f"{self.path}: dropped an unfinished last line ({len(data) - complete} bytes)"
            )
        for number, raw in enumerate(data[:complete].splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                result = BatchResult.model_validate_json(raw)
            except ValidationError:
                self.problems.append(f"{self.path}:{number}: not a result line; left as is")
                continue
            self.done.setdefault(str(result.id), result)

    def append(self, result: BatchResult) -> None:
        data = result.line().encode("utf-8")
        while data:  # one write per line (O_APPEND); a regular file takes it whole
            data = data[os.write(self._fd, data) :]
        self.done[str(result.id)] = result

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1
