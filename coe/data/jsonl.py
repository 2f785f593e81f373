"""Reading user data files (JSONL, text) so that every problem is reported as ``file:line: why``.

Why collect instead of stopping at the first bad row: a user fixing a 10,000-line file wants every
problem in one run, and none of the good rows may be silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coe.errors import CoEError

MAX_SHOWN = 20


def read_utf8(path: Path, error: type[CoEError]) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert the file, e.g. iconv -f latin1 -t utf-8"
        ) from None


def jsonl_rows(path: Path, text: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; lines that are not JSON objects go to ``problems``."""
    # split("\n"), not splitlines(): JSON strings may hold U+0085 / U+2028 raw (router_mix does), and
    # splitlines() would cut a row in two there; a stray "\r" is whitespace to json.loads.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{n}: expected a JSON object")
            continue
        yield n, row


def raise_problems(problems: list[str], error: type[CoEError]) -> None:
    if problems:
        more = [f"... and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else []
        raise error("\n".join(problems[:MAX_SHOWN] + more))


def read_jsonl(path: Path, error: type[CoEError]) -> list[tuple[int, dict[str, Any]]]:
    """Every row of a JSONL file with its line number; one ``error`` listing every bad line, if any."""
    if not path.is_file():
        raise error(f"{path}: no such file")
    problems: list[str] = []
    rows = list(jsonl_rows(path, read_utf8(path, error), problems))
    raise_problems(problems, error)
    if not rows:
        raise error(f"{path}: no rows")
    return rows
