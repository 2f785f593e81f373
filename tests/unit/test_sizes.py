"""The house size rule as a test: no class in ``coe``, ``routers`` or ``aggregators`` with more than 25
methods, no function or method longer than 80 lines.

A class past 25 methods holds more than one job and a function past 80 lines no longer reads in one
screen; both are where a newcomer gets lost and where copies start. The failure names each offender
with its file, line and size, so the message is the to-do list.

Sizes are read from the source with ``ast``: a function's lines run from its ``def`` to its last
statement (docstring, comments and nested functions included); a class's methods are the functions
defined directly in its body (properties and dunders count, nested classes are judged on their own).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

PACKAGES = ("coe", "routers", "aggregators")
MAX_METHODS = 25
MAX_LINES = 80

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def oversized(tree: ast.AST, where: str) -> list[str]:
    """Every class over ``MAX_METHODS`` methods and every function over ``MAX_LINES`` lines in
    ``tree``, as ``where:line: what``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = sum(isinstance(n, _FUNCTIONS) for n in node.body)
            if methods > MAX_METHODS:
                found.append(f"{where}:{node.lineno}: class {node.name} has {methods} methods")
        elif isinstance(node, _FUNCTIONS):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_LINES:
                found.append(f"{where}:{node.lineno}: {node.name} is {lines} lines long")
    return found


def test_no_class_over_25_methods_and_no_function_over_80_lines() -> None:
    found = []
    for path in _sources():
        where = path.relative_to(ROOT).as_posix()
        found += oversized(ast.parse(path.read_text(encoding="utf-8"), str(path)), where)
    assert not found, (
        f"over the house limits ({MAX_METHODS} methods a class, {MAX_LINES} lines a function):\n  "
        + "\n  ".join(found)
    )


def test_the_check_counts_what_the_rule_means() -> None:
    """The check itself: one line over each limit is caught, the limit itself is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 2))
    at_limit = f"def at_limit():\n    '''doc'''\n{body}\n"
    over = f"async def over():\n    '''doc'''\n{body}\n    return 1\n"
    methods = "\n".join(f"    def m{i}(self): pass" for i in range(MAX_METHODS))
    classes = f"class Full:\n{methods}\n\nclass Over:\n{methods}\n    @property\n    def extra(self): pass\n"
    found = oversized(ast.parse(at_limit + over + classes), "m.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        f"over is {MAX_LINES + 1} lines long",
        f"class Over has {MAX_METHODS + 1} methods",
    ]
    assert found[0].startswith(f"m.py:{MAX_LINES + 1}: ")  # where the offender's def is
