"""Reading a registry: YAML, ${ENV} interpolation, validation, and the cross-reference checks that
no single model can make (a category naming an expert that does not exist)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from coe.config.messages import explain, format_issue, line_index
from coe.config.schema import CoEConfig
from coe.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | os.PathLike[str]) -> CoEConfig:
    """Read, interpolate and validate a registry; raise ConfigError listing every problem."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"{file}: file not found"])
    text = file.read_text(encoding="utf-8")
    return parse_config(text, source=file)


def parse_config(text: str, source: Path | None = None) -> CoEConfig:
    name = str(source) if source else "<string>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{name}: expected a mapping at the top level, got {type(data).__name__}"])
    lines = line_index(text)
    env_issues: list[str] = []
    data = _interpolate(data, (), env_issues)
    if env_issues:
        raise ConfigError([format_issue(name, lines, loc, msg) for loc, msg in env_issues])  # type: ignore[arg-type]
    data["source"] = source
    try:
        config = CoEConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([format_issue(name, lines, *explain(err)) for err in exc.errors()]) from None
    problems = _check_references(config)
    if problems:
        raise ConfigError([format_issue(name, lines, loc, msg) for loc, msg in problems])
    return config


def _interpolate(value: Any, loc: tuple[Any, ...], issues: list[tuple[tuple[Any, ...], str]]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in strings; a missing variable is an error at its key."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), issues) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        issues.append(
            (loc, f"environment variable {var} is not set (write ${{{var}:-default}} for a default)")
        )
        return ""

    return _ENV_PATTERN.sub(substitute, value)


def _check_references(config: CoEConfig) -> list[tuple[tuple[Any, ...], str]]:
    known = sorted(config.experts)
    problems: list[tuple[tuple[Any, ...], str]] = []

    def need(loc: tuple[Any, ...], name: str) -> None:
        if name not in config.experts:
            problems.append((loc, f"unknown expert {name!r}; expected one of: {', '.join(known)}"))

    if not config.experts:
        problems.append((("experts",), "at least one expert is required"))
    for cat, spec in config.router.categories.items():
        need(("router", "categories", cat, "expert"), spec.expert)
        if not spec.examples and not spec.description and not config.router.model:
            problems.append((("router", "categories", cat), "give examples and/or a description"))
    if config.router.fallback is not None:
        need(("router", "fallback", "expert"), config.router.fallback.expert)
    if config.router.llm is not None:
        need(("router", "llm", "expert"), config.router.llm.expert)
    elif config.router.classifier == "llm" and not config.router.model:
        why = "classifier llm needs a router.llm block naming the expert"
        problems.append((("router", "classifier"), why))
    if config.router.model and config.router.max_tokens is not None:
        why = "an artefact routes with the truncation it was trained with: coe train-router --max-tokens"
        problems.append((("router", "max_tokens"), why))
    if config.router.model and not config.resolve_path(config.router.model).is_file():
        missing = config.resolve_path(config.router.model)
        problems.append((("router", "model"), f"no such file: {missing}; write it with `coe train-router`"))
    if config.aggregator.expert is not None:
        need(("aggregator", "expert"), config.aggregator.expert)
    skills = config.router.skills
    if config.router.type == "skills" and skills is None:
        problems.append((("router", "skills"), "the skills router needs a skills block with a profile"))
    if skills is not None:  # the profile file itself is read by the router: `coe profile` writes it
        for key in ("annotator", "fallback"):
            if getattr(skills, key) is not None:
                need(("router", "skills", key), getattr(skills, key))
    problems.extend(_check_cost_router(config, need))
    if config.router.type == "category" and not config.router.categories:
        problems.append((("router", "categories"), "the category router needs at least one category"))
    problems += _check_retrieval(config)
    return problems


def _check_cost_router(config: CoEConfig, need: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Unknown experts are reported through ``need``; a missing block or artefact is returned."""
    cost = config.router.cost
    if config.router.type == "cost" and cost is None:
        why = "the cost router needs a cost block with a model (from `coe train-cost-router`)"
        return [(("router", "cost"), why)]
    if cost is None:
        return []
    for name in cost.experts:
        need(("router", "cost", "experts", name), name)
    for name in cost.costs:
        need(("router", "cost", "costs", name), name)
    path = config.resolve_path(cost.model)
    return [] if path.is_file() else [(("router", "cost", "model"), f"no such file: {path}")]


def _check_retrieval(config: CoEConfig) -> list[tuple[tuple[Any, ...], str]]:
    """What the chosen gate needs. The index itself is checked when used: a missing index makes
    `ask` answer without documents (the trace says why) instead of refusing to start."""
    rag = config.retrieval
    if rag is None:
        return []
    problems: list[tuple[tuple[Any, ...], str]] = []
    if rag.gate != "never" and not rag.index:
        problems.append((("retrieval", "index"), f"gate {rag.gate!r} needs an index (coe index build)"))
    if rag.gate == "classifier" and not rag.model:
        problems.append((("retrieval", "model"), "gate 'classifier' needs a model from `coe train-gate`"))
    missing = [p for p in ("{documents}", "{question}") if p not in rag.prompt]
    if missing:
        problems.append((("retrieval", "prompt"), f"must contain {' and '.join(missing)}"))
    if rag.gate == "category" and not any(c.retrieve for c in config.router.categories.values()):
        problems.append(
            (("retrieval", "gate"), "gate 'category' needs at least one router category with retrieve: true")
        )
    return problems
