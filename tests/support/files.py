"""Writing test input files (one helper, so every test writes JSONL the same way)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    """One JSON value per line; a ``str`` row is written as it is (for malformed-line tests)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def out_ids(path: Path) -> list[str]:
    return [str(json.loads(line)["id"]) for line in path.read_text().splitlines()]
