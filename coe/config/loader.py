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
from coe.config.messages import (
    Strategies,
    duplicate_keys,
    explain,
    format_duplicate,
    format_issue,
    line_index,
    syntax_issue,
)
from coe.config.schema import CoEConfig, strategy_model
from coe.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | os.PathLike[str]) -> CoEConfig:
    """Read, interpolate and validate a registry; raise ConfigError listing every problem."""
    config, issues = read_config(path)
    if issues or config is None:
        raise ConfigError(issues)
    return config


def read_config(path: str | os.PathLike[str]) -> tuple[CoEConfig | None, list[str]]:
    """The registry and every problem found in it (``file:line: key.path: message``), without raising:
    ``coe validate`` goes on to the files and the strategies with what could be read."""
    file = Path(path)
    if not file.is_file():
        return None, [f"{file}: file not found"]
    return collect_config(file.read_text(encoding="utf-8"), source=file)


def parse_config(text: str, source: Path | None = None) -> CoEConfig:
    config, issues = collect_config(text, source)
    if issues or config is None:
        raise ConfigError(issues)
    return config


def collect_config(text: str, source: Path | None = None) -> tuple[CoEConfig | None, list[str]]:
    """Every stage whose input exists, their problems together: duplicate keys, ${ENV}, the schema,
    then the cross-references. Unknown keys do not stop the later stages (they are dropped for them,
    so a misspelt key, a dangling reference and a missing file show up in one run); any other schema
    error does, and the config is then None."""
    name = str(source) if source else "<string>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [syntax_issue(name, exc)]
    if not isinstance(data, dict):
        return None, [f"{name}: expected a mapping at the top level, got {type(data).__name__}"]
    lines = line_index(text)
    issues = [format_duplicate(name, *dup) for dup in duplicate_keys(root)]
    env_issues: list[tuple[tuple[Any, ...], str]] = []
    data = _interpolate(data, (), env_issues)
    issues += [format_issue(name, lines, loc, msg) for loc, msg in env_issues]
    data["source"] = source
    config = None
    for _ in range(2):  # the second pass without the unknown keys the first one reported
        try:
            config = CoEConfig.model_validate(data)
            break
        except ValidationError as exc:
            strategies = _strategy_models(data)
            explained = [(err["type"], explain(err, strategies)) for err in exc.errors()]
            issues += [i for i in (format_issue(name, lines, *e) for _, e in explained) if i not in issues]
            unknown = [loc for kind, (loc, _) in explained if kind == "extra_forbidden"]
            if len(unknown) < len(explained):
                return None, issues
            for loc in unknown:
                _prune(data, loc)
    if config is None:
        return None, issues
    issues += [format_issue(name, lines, loc, msg) for loc, msg in _check_references(config)]
    return config, issues


def _prune(data: Any, loc: tuple[Any, ...]) -> None:
    """Drop the key at ``loc`` (a path through mappings and lists), if it is there."""
    for part in loc[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(data, dict):
        data.pop(loc[-1], None)


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
