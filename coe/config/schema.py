"""The registry file as one model: the encoder, experts, routing, retrieval, serving and server blocks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, SerializeAsAny, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from coe.config.base import CONFIG_VERSION, Strict
from coe.config.experts import DeployConfig, ExpertConfig
from coe.config.routing import AggregatorConfig, RouterConfig, aggregator_config_model, router_config_model
from coe.config.signals import SignalsConfig
from coe.config.telemetry import TelemetryConfig
from coe.config.traces import TracesConfig

ENCODER_THREADS = 1  # embedder.threads' default; `coe eval router` times latency with it too
GateKind = Literal["never", "always", "category", "similarity", "classifier"]


class EmbedderConfig(Strict):
    """The sentence encoder. ``model`` names an offline package (see coe.encoding.embedder); ``path`` wins."""

    model: str = Field(
        "all-MiniLM-L6-v2", description="the encoder, found in an installed package (never a hub)"
    )
    path: str | None = Field(
        None, description="a local encoder folder (e.g. from `coe finetune-encoder`); wins over model"
    )
    device: str = Field("cpu", description="torch device of the torch backend")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="prompts per encoder call; None: the backend's best (torch 16; onnx and onnx-int8 1: "
        "no padding, activations stay in cache, and int8 vectors do not depend on their batch-mates)",
    )
    threads: int | None = Field(
        ENCODER_THREADS,
        ge=1,
        description="encoder threads per prompt. 1: next to llama.cpp experts on a small CPU a second "
        "encoder thread spins against them and routing gets many times slower; null: the library's "
        "default (all cores), for a machine with cores to spare",
    )
    backend: Literal["torch", "onnx", "onnx-int8", "static"] = Field(
        "torch",
        description="torch: sentence-transformers; onnx: int8 ONNX export (same vectors, several times "
        "faster); onnx-int8: the same file quantised to int8 matrix products (faster again; close to "
        "but not the same vectors as torch: its own space); static: a model2vec-style encoder "
        "distilled offline by `coe distil-encoder`",
    )
    max_tokens: int | None = Field(
        None, ge=8, description="encode only the first N tokens of a prompt (speed); None: the model's limit"
    )


class ServingConfig(Strict):
    """How many experts are loaded at once. See coe.experts.scheduler for the admission policy."""

    memory_budget_gb: float | None = Field(
        None, gt=0, description="memory for loaded experts together; None: no limit (load all on use)"
    )
    eviction: Literal["lru", "lookahead"] = Field(
        "lru", description="lru, or lookahead: evict the expert whose next known use is furthest away"
    )
    max_wait_s: float = Field(
        30.0, gt=0, description="longest a request waits for busy experts before one is drained for it"
    )
    admission_window_s: float = Field(
        0.05, ge=0, description="an expert idle for less than this is not evicted (its next request may come)"
    )
    state_dir: str | None = Field(None, description="where running experts and logs are recorded")


class ServerConfig(Strict):
    """``coe serve`` settings; a flag on the command line wins over the file."""

    host: str = Field("127.0.0.1", description="loopback unless you mean to expose it")
    port: int = Field(8000, ge=1, le=65535, description="the HTTP port")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="bearer keys, e.g. ${COE_API_KEY}; COE_API_KEYS adds more"
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    max_tokens: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    max_concurrency: int | None = Field(
        None, ge=1, description="concurrent calls per expert; default: its llama.cpp slots, or 8"
    )
    max_queue: int = Field(64, ge=0, description="requests waiting per expert before 429")
    unknown_fields: Literal["refuse", "forward"] = Field(
        "refuse",
        description="a request field CoE does not know (an engine extension such as top_k): refuse (400 "
        "naming it) or forward it to the expert unchanged",
    )


DEFAULT_RAG_PROMPT = (
    "Documents:\n{documents}\n\nAnswer the question below. Use the documents above if they help and cite "
    "the ids of those you use in brackets, e.g. [{first_id}].\n\nQuestion: {question}"
)


class RetrievalConfig(Strict):
    """Retrieval gating (``coe.retrieval``): per prompt, decide whether to fetch documents from an
    index built by `coe index build`, and put the chunks kept into the chosen expert's prompt."""

    gate: GateKind = Field(
        "similarity",
        description="never | always | category (router.categories.*.retrieve) | similarity (keep the "
        "documents if the best cosine passes threshold) | classifier (model from `coe train-gate`)",
    )
    index: str | None = Field(None, description="index folder from `coe index build` (relative to this file)")
    model: str | None = Field(
        None, description="gate file from `coe train-gate` (relative to this file); required by classifier"
    )
    threshold: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="similarity: min best cosine (default: the model's, else 0.5); classifier: min "
        "probability (default: the one tuned in the model)",
    )
    top_k: int = Field(3, ge=1, le=50, description="chunks fetched per prompt")
    max_context_chars: int = Field(
        3000, ge=100, description="documents beyond this many characters are dropped"
    )
    prompt: str = Field(
        DEFAULT_RAG_PROMPT,
        description="the user turn with documents: {documents} and {question} are replaced, {first_id} too",
    )


class CoEConfig(Strict):
    version: Literal[1] = Field(CONFIG_VERSION, description="the registry format; 1")
    embedder: EmbedderConfig = Field(
        default_factory=EmbedderConfig, description="the sentence encoder routing and retrieval share"
    )
    experts: dict[str, ExpertConfig] = Field(description="the experts, by name")
    router: SerializeAsAny[RouterConfig] = Field(
        default_factory=dict,  # validated into the default router's model
        validate_default=True,
        description="how prompts are routed: `type` picks the router, the rest is its settings",
    )
    aggregator: SerializeAsAny[AggregatorConfig] = Field(
        default_factory=dict,
        validate_default=True,
        description="how several answers become one: `type` picks the aggregator, the rest is its settings",
    )
    serving: ServingConfig = Field(
        default_factory=ServingConfig, description="how many experts are loaded at once (memory budget)"
    )
    server: ServerConfig = Field(default_factory=ServerConfig, description="`coe serve` settings")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="cluster settings (coe deploy)")
    retrieval: RetrievalConfig | None = Field(None, description="retrieval gating; absent: never retrieve")
    traces: TracesConfig = Field(
        default_factory=TracesConfig, description="the trace store: each request recorded (coe traces)"
    )
    signals: SignalsConfig = Field(
        default_factory=SignalsConfig,
        description="checks before the expert (semantic cache, guard, PII): docs/signals.md",
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="OpenTelemetry spans of `coe serve` (off by default)"
    )
    # Not part of the file: where it was read from, so relative paths resolve against it.
    source: Path | None = Field(None, exclude=True)

    @field_validator("router", mode="before")
    @classmethod
    def _router_settings(cls, value: Any) -> Any:
        return _strategy_settings("routers", value, RouterConfig().type)

    @field_validator("aggregator", mode="before")
    @classmethod
    def _aggregator_settings(cls, value: Any) -> Any:
        return _strategy_settings("aggregators", value, AggregatorConfig().type)

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.base_dir / path)


def strategy_model(kind: Literal["routers", "aggregators"], name: str) -> type[Strict]:
    """The settings model of the strategy ``name`` (ConfigError when it cannot be found)."""
    return router_config_model(name) if kind == "routers" else aggregator_config_model(name)


def _strategy_settings(kind: Literal["routers", "aggregators"], value: Any, default_type: str) -> Any:
    """A ``router:`` or ``aggregator:`` mapping validated against the settings model its ``type``
    names (the tagged union of strategies): errors keep their key paths under the block."""
    if not isinstance(value, dict):
        return value  # a settings object already, or pydantic reports the wrong type
    from coe.errors import ConfigError

    name = value.get("type", default_type)
    if not isinstance(name, str):
        return value  # the base model reports it
    try:
        model = strategy_model(kind, name)
    except ConfigError as exc:
        key = "router.type: " if kind == "routers" else "aggregator.type: "
        detail = exc.issues[0].removeprefix(key)
        error = InitErrorDetails(
            type=PydanticCustomError("unknown_strategy", "{detail}", {"detail": detail}),
            loc=("type",),
            input=name,
        )
        raise ValidationError.from_exception_data(kind, [error]) from None
    return model.model_validate(value)
