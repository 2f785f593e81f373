"""docs/architecture.md's module map against the tree: every module and package of ``coe``, ``routers``
and ``aggregators`` is on the map, and every one the map names exists.

The map is where a newcomer looks first, so a module added without a line there, or a line left
behind by a move, fails here with the module's path and where its line goes.

How the map names a module, as it is written:
- a table row whose first cell is its path (``coe/orchestrator.py``, ``coe/encoding/build/``);
- a package's row (or, for ``aggregators/``, the prose under its heading) naming it by short name in
  backticks: ``pool`` for ``coe/experts/pool.py``, ``apis/`` for the package ``coe/server/apis/``;
- a path in backticks anywhere in the map (``coe/config/signals.py``).
In a package's row every backticked lower-case identifier is read as one of its modules, so other
words there go without backticks (write "the coe command", not "the `coe` command").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.support.paths import ROOT

PACKAGES = ("coe", "routers", "aggregators")
MAP = ROOT / "docs" / "architecture.md"

_TICKED = re.compile(r"`([^`]+)`")
_SHORT_NAME = re.compile(r"[a-z_][a-z0-9_]*/?")
_PATH = re.compile(r"(?:coe|routers|aggregators)/(?:[A-Za-z0-9_]+/)*(?:[A-Za-z0-9_]+(?:\.py|/))?")
_CELL = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Entry:
    """A row of the map (or a heading and its prose): the path it is about and what it says."""

    path: str
    text: str
    line: int


def map_entries(markdown: str) -> list[Entry]:
    """The rows and the headings of the ``## Module map`` section; a heading's text is the prose under
    it (how ``aggregators/`` lists its modules), not its table."""
    lines = markdown.splitlines()
    start = lines.index("## Module map")
    entries: list[Entry] = []
    heading: int | None = None  # index in entries of the heading whose prose is being read
    for n, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("## "):
            break
        ticked = _TICKED.findall(line)
        if line.startswith("### "):
            heading = len(entries) if ticked else None
            if ticked:
                entries.append(Entry(ticked[0], "", n))
        elif line.startswith("|"):
            heading = None
            cells = [c.strip() for c in _CELL.split(line.strip().strip("|"))]
            first = _TICKED.fullmatch(cells[0])
            if first and len(cells) > 1:
                entries.append(Entry(first.group(1), " ".join(cells[1:]), n))
        elif heading is not None:
            e = entries[heading]
            entries[heading] = Entry(e.path, f"{e.text} {line}", e.line)
    return entries


@dataclass(frozen=True)
class Named:
    path: str  # "coe/experts/pool.py" or "coe/server/apis/"
    line: int  # where in docs/architecture.md


def named(entries: list[Entry]) -> list[Named]:
    """Every module and package the map names, as paths relative to the repository."""
    out = []
    for e in entries:
        if _PATH.fullmatch(e.path):
            out.append(Named(e.path, e.line))
        for token in _TICKED.findall(e.text):
            if _PATH.fullmatch(token):
                out.append(Named(token, e.line))
            elif e.path.endswith("/") and _SHORT_NAME.fullmatch(token):
                out.append(Named(e.path + (token if token.endswith("/") else token + ".py"), e.line))
    return out


def tree() -> set[str]:
    """The modules (``x/y.py``) and packages (``x/y/``) of the engine and the strategies."""
    out = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            out.add(rel.removesuffix("__init__.py") if path.name == "__init__.py" else rel)
    return out


def _exists(path: str) -> bool:
    """A module, a package, or a folder a package row names (``ui/``); a short name may be a package."""
    target = ROOT / path
    return target.exists() or (path.endswith(".py") and (ROOT / path.removesuffix(".py")).is_dir())


def _normalised(path: str) -> str:
    """A package's ``__init__.py`` is the package; ``coe/signals/guard.py``, named by a short name
    without its slash, is the package ``guard/``."""
    if path.endswith("/__init__.py"):
        return path.removesuffix("__init__.py")
    if path.endswith(".py") and not (ROOT / path).exists() and (ROOT / path.removesuffix(".py")).is_dir():
        return path.removesuffix(".py") + "/"
    return path


def _where_to_list(module: str, entries: list[Entry]) -> str:
    """Where the missing module's line goes: beside its siblings when its package lists them by short
    name, else a row of its own (the ``coe/`` root's style)."""
    parent, _, name = module.rstrip("/").rpartition("/")
    short = name.removesuffix(".py") + ("/" if module.endswith("/") else "")
    if any(e.path == parent + "/" and e.text.strip() for e in entries):
        return f"{module}: add `{short}` to the entry of `{parent}/`"
    if parent in PACKAGES:
        return f"{module}: give it a row `{module}`"
    return f"{module}: give `{parent}/` a row that lists `{short}`"


def test_every_module_is_on_the_map_and_every_module_named_exists() -> None:
    entries = map_entries(MAP.read_text(encoding="utf-8"))
    names = named(entries)
    listed = {_normalised(n.path) for n in names}
    missing = sorted(tree() - listed)
    gone = sorted({f"{n.path} (docs/architecture.md:{n.line})" for n in names if not _exists(n.path)})
    problems = [f"not on the map: {_where_to_list(m, entries)}" for m in missing]
    problems += [f"on the map but not in the tree: {g}" for g in gone]
    assert not problems, "docs/architecture.md's module map is out of date:\n  " + "\n  ".join(problems)


def test_the_map_reader_sees_rows_short_names_and_prose() -> None:
    """The reader itself, on a small map: a module left off and a module named but absent are both
    reported; a package row covers its modules, a heading's prose covers its package."""
    text = "\n".join(
        [
            "## Module map",
            "### `coe/`: the engine",
            "| module | what it holds |",
            "|---|---|",
            "| `coe/orchestrator.py` | `CoE` and the `coe ask` path |",
            "| `coe/experts/` | `pool` (leases \\| admission), `apis/`, `coe/config/signals.py`, `gone` |",
            "### `aggregators/`",
            "`first` (the default) and `vote`.",
            "## Layering rules",
            "| `coe/never.py` | after the section |",
        ]
    )
    found = {n.path: n.line for n in named(map_entries(text))}
    assert found == {
        "coe/": 2,
        "coe/orchestrator.py": 5,
        "coe/experts/": 6,
        "coe/experts/pool.py": 6,
        "coe/experts/apis/": 6,
        "coe/config/signals.py": 6,
        "coe/experts/gone.py": 6,
        "aggregators/": 7,
        "aggregators/first.py": 7,
        "aggregators/vote.py": 7,
    }
    assert not _exists("coe/experts/gone.py") and _exists("coe/experts/pool.py") and _exists("coe/server/ui/")
    entries = map_entries(text)
    assert _where_to_list("coe/experts/calls.py", entries) == (
        "coe/experts/calls.py: add `calls` to the entry of `coe/experts/`"
    )
    assert _where_to_list("coe/clock.py", entries) == "coe/clock.py: give it a row `coe/clock.py`"
    assert _where_to_list("coe/pipeline/stages.py", entries) == (
        "coe/pipeline/stages.py: give `coe/pipeline/` a row that lists `stages`"
    )
