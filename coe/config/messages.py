"""Validation errors as users read them: ``file:line: key.path: message``, with the keys that are
valid at that place. The key path is found by walking the model types, so it stays right as the
schema grows."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from coe.config.schema import CoEConfig

# The settings model each strategy block was validated against: {"router": CategoryRouterConfig, ...}.
Strategies = Mapping[str, type[BaseModel]]


def explain(err: Any, strategies: Strategies | None = None) -> tuple[tuple[Any, ...], str]:
    """``strategies``: the settings model each strategy block (``router``, ``aggregator``) was validated
    against, so that the keys offered are that strategy's own."""
    strategies = strategies or {}
    raw = tuple(err["loc"])
    # pydantic puts the name of a union member into loc ("function-after[...]" etc.); drop those.
    raw = tuple(p for p in raw if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
    loc, _ = _walk(raw, strategies)  # and the tag of a tagged union (serve.engine) too
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(raw[:-1], strategies)
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return loc, f"unknown key {loc[-1]!r}{hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str((err.get("ctx") or {}).get("discriminator", "")).strip("'")
        tags = ", ".join(_tags(_walk(raw, strategies)[1]))
        if kind == "union_tag_not_found":
            return (*loc, key), f"required key is missing; expected one of: {tags}"
        return (*loc, key), f"unknown {key} {err['ctx']['tag']!r}; expected one of: {tags}"
    if kind == "missing":
        return loc, "required key is missing"
    got = err.get("input")
    if kind == "string_type" and isinstance(got, dict):
        return loc, "expected text but got a mapping: quote text that contains ': '"
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return loc, f"{msg}{shown}"


def _allowed_keys(loc: tuple[Any, ...], strategies: Strategies) -> list[str]:
    """The keys valid at ``loc``, found by walking the model types along it."""
    models = _models(_walk(loc, strategies)[1])
    return [n for n in models[0].model_fields if n != "source"] if len(models) == 1 else []


def _walk(loc: tuple[Any, ...], strategies: Strategies) -> tuple[tuple[Any, ...], Any]:
    """Follow ``loc`` through the model types. Returns it without the tags pydantic inserts for a
    tagged union (``serve.llamacpp.ctx`` is shown as ``serve.ctx``) and the type found at its end."""
    current: Any = CoEConfig
    shown: list[Any] = []
    for part in loc:
        models = _models(current)
        by_tag = {tag: m for m in models for tag in _tags(m)}
        if len(models) > 1 and part in by_tag:
            current = by_tag[part]
            continue
        shown.append(part)
        if len(models) == 1:
            field = models[0].model_fields.get(str(part))
            current = field.annotation if field is not None else None
            if models[0] is CoEConfig and part in strategies:
                current = strategies[part]
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            current = None
    return tuple(shown), current


def _models(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models a type annotation stands for (Optional, unions and Annotated unwrapped)."""
    if typing.get_origin(tp) is typing.Annotated:
        return _models(typing.get_args(tp)[0])
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return [m for a in typing.get_args(tp) for m in _models(a)]
    return [tp] if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _tags(tp: Any) -> list[str]:
    """The values of the ``engine`` tag that select among the models of ``tp``."""
    out = []
    for model in _models(tp):
        field = model.model_fields.get("engine")
        if field is not None and typing.get_origin(field.annotation) is Literal:
            out += [str(v) for v in typing.get_args(field.annotation)]
    return out


def format_issue(name: str, lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...], msg: str) -> str:
    line = _nearest_line(lines, loc)
    where = f"{name}:{line}" if line else name
    path = ".".join(str(p) for p in loc) or "<top>"
    return f"{where}: {path}: {msg}"


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def syntax_issue(name: str, exc: yaml.YAMLError) -> str:
    """A YAML syntax error as one line, ``file:line:col: message`` (PyYAML's own text is several lines
    and names the file ``<unicode string>``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        context = f"{context} at line {context_mark.line + 1}"
    message = (f"{problem} ({context})" if context else str(problem)).replace("\n", " ")
    if mark is None:
        return f"{name}: not valid YAML: {message}"
    return f"{name}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {message}"


def duplicate_keys(root: yaml.Node | None) -> list[tuple[tuple[Any, ...], int, int]]:
    """(key path, first line, repeated line) for each key given twice in one mapping: PyYAML keeps the
    last silently, so two ``shell:`` categories would quietly become one."""
    found: list[tuple[tuple[Any, ...], int, int]] = []

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.value in seen:
                    found.append(((*loc, key.value), seen[key.value], line))
                else:
                    seen[key.value] = line
                walk(value, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return found


def format_duplicate(name: str, loc: tuple[Any, ...], first: int, again: int) -> str:
    path = ".".join(str(p) for p in loc)
    return f"{name}:{again}: {path}: duplicate key {loc[-1]!r}, also at line {first} (only one may be given)"


def line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML document to its 1-based line number."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    index: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*loc, key.value)
                index[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[(*loc, i)] = item.start_mark.line + 1
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return index
