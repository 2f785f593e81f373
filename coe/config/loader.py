"""Reading a registry: YAML, ${ENV} interpolation, validation, and the cross-reference checks that
no single model can make (a category naming an expert that does not exist)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from coe.config.base import Issue
from coe.config.messages import Strategies, explain, format_issue, line_index
from coe.config.schema import CoEConfig, strategy_model
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
    env_issues: list[tuple[tuple[Any, ...], str]] = []
    data = _interpolate(data, (), env_issues)
    if env_issues:
        raise ConfigError([format_issue(name, lines, loc, msg) for loc, msg in env_issues])
    data["source"] = source
    try:
        config = CoEConfig.model_validate(data)
    except ValidationError as exc:
        strategies = _strategy_models(data)
        issues = [format_issue(name, lines, *explain(err, strategies)) for err in exc.errors()]
        raise ConfigError(issues) from None
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


def _check_references(config: CoEConfig) -> list[Issue]:
    """The engine's own checks, then each strategy's (``RouterConfig.check``, ``AggregatorConfig.check``)."""
    problems: list[Issue] = []
    if not config.experts:
        problems.append(Issue(("experts",), "at least one expert is required"))
    problems += config.router.check(config)
    problems += config.aggregator.check(config)
    problems += _check_retrieval(config)
    problems += config.signals.check(config)
    return problems


def _strategy_models(data: dict[str, Any]) -> Strategies:
    """The settings model of each strategy block, for error messages that offer that model's keys.
    A type that cannot be resolved is reported by validation itself."""
    found: dict[str, type[BaseModel]] = {}
    blocks: tuple[tuple[str, Literal["routers", "aggregators"], str], ...] = (
        ("router", "routers", "category"),
        ("aggregator", "aggregators", "first"),
    )
    for key, kind, default in blocks:
        block = data.get(key)
        name = block.get("type", default) if isinstance(block, dict) else default
        if isinstance(name, str):
            with contextlib.suppress(ConfigError):
                found[key] = strategy_model(kind, name)
    return found


def _check_retrieval(config: CoEConfig) -> list[Issue]:
    """What the chosen gate needs. The index itself is checked when used: a missing index makes
    `ask` answer without documents (the trace says why) instead of refusing to start."""
    rag = config.retrieval
    if rag is None:
        return []
    problems: list[Issue] = []
    if rag.gate != "never" and not rag.index:
        problems.append(Issue(("retrieval", "index"), f"gate {rag.gate!r} needs an index (coe index build)"))
    if rag.gate == "classifier" and not rag.model:
        problems.append(
            Issue(("retrieval", "model"), "gate 'classifier' needs a model from `coe train-gate`")
        )
    missing = [p for p in ("{documents}", "{question}") if p not in rag.prompt]
    if missing:
        problems.append(Issue(("retrieval", "prompt"), f"must contain {' and '.join(missing)}"))
    if rag.gate == "category" and not any(c.retrieve for c in config.router.category_routes().values()):
        why = "gate 'category' needs at least one router category with retrieve: true"
        problems.append(Issue(("retrieval", "gate"), why))
    return problems
