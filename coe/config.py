"""The registry: experts.yaml as pydantic models, with errors that name file, line and key path.

Why so strict: a typo in a YAML key that is silently ignored routes traffic to the wrong model for
weeks. Unknown keys are errors, experts and categories are mappings keyed by name (order never
matters), and every cross-reference (category -> expert) is checked before anything starts.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from coe.errors import ConfigError

CONFIG_VERSION = 1
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EmbedderConfig(_Strict):
    """The sentence encoder. ``model`` names an offline package (see coe.embedder); ``path`` wins."""

    model: str = "all-MiniLM-L6-v2"
    path: str | None = None
    device: str = "cpu"
    batch_size: int = Field(16, ge=1, description="measured best on 2 cores: 8-16 (padding grows with batch)")
    threads: int | None = Field(
        None, ge=1, description="torch threads for encoding; 1 avoids contention with local experts"
    )


class GenerationParams(_Strict):
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0, description="llama.cpp and vLLM sampling extension")
    extra: dict[str, Any] = Field(default_factory=dict, description="engine-specific request fields")


class LlamaCppServe(_Strict):
    """Run llama.cpp's ``llama-server`` for this expert, one process per expert on a loopback port."""

    engine: Literal["llamacpp"]
    gguf: str = Field(description="pkg:MODULE/FILE, pkg:MODULE (assembling package) or a path")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    ctx: int = Field(2048, ge=128)
    threads: int | None = Field(None, ge=1)
    parallel: int = Field(2, ge=1, description="concurrent slots; each gets ctx/parallel tokens")
    chat_template: str | None = None
    gpu_layers: int = Field(0, ge=-1)
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(120.0, gt=0)


class ExpertConfig(_Strict):
    """One expert. Exactly one of ``serve`` (CoE runs it), ``endpoint`` (already running) or
    ``provider`` (a litellm model string) says where it lives."""

    model: str | None = None
    description: str = ""
    serve: LlamaCppServe | None = None
    endpoint: str | None = Field(None, pattern=r"^https?://")
    provider: str | None = None
    api_key: SecretStr | None = None
    system: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    params_b: float | None = Field(None, gt=0, description="size in billions, for active-parameter reports")
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _one_location(self) -> ExpertConfig:
        # `endpoint` next to `provider` is that provider's API base (litellm's api_base).
        given = [k for k in ("serve", "endpoint", "provider") if getattr(self, k) is not None]
        if given == ["endpoint", "provider"]:
            return self
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"exactly one of serve, endpoint, provider is required (found: {found})")
        return self

    @property
    def kind(self) -> Literal["serve", "endpoint", "provider"]:
        if self.serve is not None:
            return "serve"
        return "provider" if self.provider is not None else "endpoint"


class CategoryConfig(_Strict):
    expert: str
    description: str = ""
    examples: list[str] = Field(default_factory=list)


class FallbackConfig(_Strict):
    expert: str
    min_confidence: float = Field(0.45, ge=0, le=1)


class RouterConfig(_Strict):
    """``type`` is a registered router name or a dotted path ``pkg.module:Class``."""

    type: str = "category"
    classifier: Literal["centroid"] = "centroid"
    categories: dict[str, CategoryConfig] = Field(default_factory=dict)
    fallback: FallbackConfig | None = None
    temperature: float | None = Field(
        None, gt=0, description="softmax temperature; None calibrates it on the examples"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="settings for plug-in routers")


class AggregatorConfig(_Strict):
    type: str = "first"
    options: dict[str, Any] = Field(default_factory=dict)


class ServingConfig(_Strict):
    memory_budget_gb: float | None = Field(None, gt=0)
    eviction: Literal["lru", "lookahead"] = "lru"
    state_dir: str | None = Field(None, description="where running experts and logs are recorded")


class CoEConfig(_Strict):
    version: Literal[1] = CONFIG_VERSION
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    experts: dict[str, ExpertConfig]
    router: RouterConfig = Field(default_factory=RouterConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    # Not part of the file: where it was read from, so relative paths resolve against it.
    source: Path | None = Field(None, exclude=True)

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.base_dir / path)


# --------------------------------------------------------------------------------------- loading


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
    lines = _line_index(text)
    env_issues: list[str] = []
    data = _interpolate(data, (), env_issues)
    if env_issues:
        raise ConfigError([_format(name, lines, loc, msg) for loc, msg in env_issues])  # type: ignore[arg-type]
    data["source"] = source
    try:
        config = CoEConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format(name, lines, *_explain(err)) for err in exc.errors()]) from None
    problems = _check_references(config)
    if problems:
        raise ConfigError([_format(name, lines, loc, msg) for loc, msg in problems])
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
        if not spec.examples and not spec.description:
            problems.append((("router", "categories", cat), "give examples and/or a description"))
    if config.router.fallback is not None:
        need(("router", "fallback", "expert"), config.router.fallback.expert)
    if config.router.type == "category" and not config.router.categories:
        problems.append((("router", "categories"), "the category router needs at least one category"))
    return problems


# ------------------------------------------------------------------------------ error messages


def _explain(err: Any) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err["loc"])
    # pydantic puts the name of a union member into loc ("function-after[...]" etc.); drop those.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return loc, f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return loc, "required key is missing"
    got = err.get("input")
    if kind == "string_type" and isinstance(got, dict):
        return loc, "expected text but got a mapping: quote text that contains ': '"
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return loc, f"{msg}{shown}"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Walk the model types along ``loc`` to list the keys valid at that place."""
    current: Any = CoEConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [n for n in current.model_fields if n != "source"]
    return []


def _unwrap(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else tp
    return tp


def _format(name: str, lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...], msg: str) -> str:
    line = _nearest_line(lines, loc)
    where = f"{name}:{line}" if line else name
    path = ".".join(str(p) for p in loc) or "<top>"
    return f"{where}: {path}: {msg}"


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
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
