"""Where an expert lives and how it is served: llama.cpp or vLLM processes, endpoints, providers,
and its replicas and resources on a cluster."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator

from coe.config.base import Strict

# What a request may need from an expert (coe/capabilities): tools (function tools in the prompt, tool
# calls parsed from the reply), tool_choice (the engine itself enforces `required` and a named
# function; without it CoE enforces them with a JSON schema), json_schema (response_format json_object
# and json_schema enforced), logprobs, vision (image parts), audio (input_audio parts), file (file
# parts), reasoning (reasoning_effort).
Capability = Literal[
    "tools", "tool_choice", "json_schema", "logprobs", "vision", "audio", "file", "reasoning"
]


class GenerationParams(Strict):
    temperature: float | None = Field(None, ge=0, description="sampling temperature; 0: greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling: keep this probability mass")
    max_tokens: int | None = Field(None, ge=1, description="longest answer, in tokens")
    stop: list[str] | None = Field(None, description="the answer ends before any of these strings")
    seed: int | None = Field(None, description="sampling seed, for repeatable answers")
    repeat_penalty: float | None = Field(None, gt=0, description="llama.cpp and vLLM sampling extension")
    extra: dict[str, Any] = Field(default_factory=dict, description="engine-specific request fields")


# A LoRA adapter as an expert: experts whose serve blocks differ only in these two share one engine
# process that loads every adapter (coe.experts.groups).
LoraPath = Annotated[
    str | None,
    Field(
        description="a LoRA adapter of this base model (llama.cpp: a GGUF adapter file; vLLM: a PEFT "
        "adapter folder), relative to this file or pkg:MODULE/FILE; experts whose serve blocks differ only "
        "in lora and lora_scale share one process that loads all their adapters, an expert without lora "
        "on the same base included",
    ),
]
LoraScale = Annotated[
    float, Field(ge=0, description="how strongly the adapter applies (llama.cpp; vLLM: 1.0 only)")
]


def _scale_needs_lora(spec: LlamaCppServe | VllmServe) -> None:
    # Only a scale that would change something: a registry written back out (model_dump) carries
    # the default 1.0 on every engine block, and must load again.
    if spec.lora is None and spec.lora_scale != 1.0:
        raise ValueError("lora_scale is set but lora is not: name the adapter file")


class LlamaCppServe(Strict):
    """Run llama.cpp's ``llama-server`` for this expert, one process per expert on a loopback port
    (one per group of LoRA adapters of one base: ``lora``)."""

    engine: Literal["llamacpp"] = Field(description="llama.cpp's llama-server")
    gguf: str = Field(description="pkg:MODULE/FILE, pkg:MODULE (assembling package) or a path")
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="expected hash of the GGUF; the packaged models have theirs",
    )
    ctx: int = Field(
        2048, ge=128, description="context length in tokens of each slot (llama-server gets ctx x parallel)"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads; None: llama-server's default")
    parallel: int = Field(2, ge=1, description="concurrent slots, each with ctx tokens")
    chat_template: str | None = Field(
        None,
        description="a llama.cpp built-in template name (e.g. gemma; rendered without Jinja, so no tools) "
        "or a Jinja template text",
    )
    chat_template_file: str | None = Field(
        None,
        description="a Jinja chat template file (relative to this file); default: the template CoE ships "
        "for a known model whose GGUF template cannot render tools, else the GGUF's own",
    )
    gpu_layers: int = Field(0, ge=-1, description="layers offloaded to a GPU; -1: all")
    extra_args: list[str] = Field(default_factory=list, description="passed to llama-server as is")
    startup_timeout_s: float = Field(120.0, gt=0, description="longest wait for the server to answer /health")
    lora: LoraPath = None
    lora_scale: LoraScale = 1.0

    @model_validator(mode="after")
    def _adapter(self) -> LlamaCppServe:
        _scale_needs_lora(self)
        return self

    @property
    def where(self) -> str:
        return self.gguf


class VllmServe(Strict):
    """Run ``vllm serve`` for this expert (GPU only) with sleep mode on, so that the pool can park it
    (weights to host RAM, level 1) instead of stopping it, and wake it in about a second."""

    engine: Literal["vllm"] = Field(description="vLLM's OpenAI server (GPU only)")
    model: str = Field(description="a local model folder (or a name vLLM can resolve offline)")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="share of the GPU this expert may take while awake"
    )
    max_model_len: int | None = Field(None, ge=128, description="context length; None: the model's own")
    max_num_seqs: int = Field(16, ge=1, description="concurrent sequences; the batch runner's concurrency")
    dtype: str | None = Field(None, description="e.g. bfloat16, float16; None: vLLM's auto")
    executable: str = Field("vllm", description="the vllm command (a path, or a name on PATH)")
    extra_args: list[str] = Field(default_factory=list, description="passed to `vllm serve` as is")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the process")
    startup_timeout_s: float = Field(900.0, gt=0, description="longest wait for the server to answer /health")
    lora: LoraPath = None
    lora_scale: LoraScale = 1.0

    @model_validator(mode="after")
    def _adapter(self) -> VllmServe:
        _scale_needs_lora(self)
        # vLLM has no per-request adapter strength: a scale other than 1 would be silently ignored.
        if self.lora_scale != 1.0:
            raise ValueError("vLLM applies a LoRA adapter at scale 1.0 only: drop lora_scale")
        return self

    @property
    def parallel(self) -> int:
        """Concurrent requests it serves well (llama.cpp's ``parallel`` slots, vLLM's max_num_seqs)."""
        return self.max_num_seqs

    @property
    def where(self) -> str:
        return self.model


ServeSpec = Annotated[LlamaCppServe | VllmServe, Field(discriminator="engine")]


class RayAutoscaling(Strict):
    """Ray Serve autoscaling bounds: replicas follow the number of requests in flight."""

    min_replicas: int = Field(1, ge=0, description="0 lets an idle expert scale to zero (cold start)")
    max_replicas: int = Field(ge=1, description="at most this many replicas")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="per replica; default: the expert's slots (serve.parallel or max_num_seqs)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> RayAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class RayDeployment(Strict):
    """How one deployment runs on a Ray cluster (``coe deploy ray``); resources are per replica."""

    replicas: int | None = Field(None, ge=1, description="a fixed number of replicas (default 1)")
    autoscaling: RayAutoscaling | None = Field(None, description="instead of replicas")
    num_cpus: float | None = Field(None, ge=0, description="default 1; llama.cpp: serve.threads if set")
    num_gpus: float | None = Field(
        None, ge=0, description="fractions share a GPU (0.5: two replicas per GPU); default 0, vLLM 1"
    )
    memory_gb: float | None = Field(None, gt=0, description="RAM reserved per replica")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per replica")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. A100, L4")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="requests one replica takes at once (default: its slots); more wait in Ray"
    )

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> RayDeployment:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("give replicas or autoscaling, not both")
        return self


class ExpertRayDeployment(RayDeployment):
    vllm: Literal["auto", "ray_llm", "process"] = Field(
        "auto",
        description="vLLM experts: Ray Serve LLM's deployment (ray_llm), a replica that runs `vllm serve` "
        "(process), or ray_llm when ray.serve.llm imports (auto)",
    )


class ExpertDeploy(Strict):
    """Where this expert runs when the registry is deployed on a cluster."""

    ray: ExpertRayDeployment | None = Field(None, description="its deployment on Ray Serve (coe deploy ray)")


class IngressRayDeployment(RayDeployment):
    """The ingress (router, gate, aggregator, the OpenAI API); experts go under /NAME/experts/EXPERT."""

    name: str = Field("coe", pattern=r"^[A-Za-z0-9_-]+$", description="the Serve application name")
    host: str = Field("127.0.0.1", description="where Ray Serve's HTTP proxies listen (0.0.0.0: all)")
    port: int = Field(8000, ge=1, le=65535, description="the HTTP port of Ray Serve's proxies")
    route_prefix: str = Field("/", pattern=r"^/", description="the ingress's route")


class DeployConfig(Strict):
    ray: IngressRayDeployment | None = Field(None, description="the ingress on Ray Serve (coe deploy ray)")


class ExpertConfig(Strict):
    """One expert. Exactly one of ``serve`` (CoE runs it), ``endpoint`` (already running) or
    ``provider`` (a litellm model string) says where it lives."""

    model: str | None = Field(None, description="the model id sent to the server; default: the expert's name")
    description: str = Field("", description="what the expert is, for people and `coe experts list`")
    serve: ServeSpec | None = Field(None, description="CoE runs this expert: llama.cpp or vLLM (engine)")
    endpoint: str | None = Field(
        None, pattern=r"^https?://", description="an OpenAI-compatible server already running (its /v1 base)"
    )
    provider: str | None = Field(None, description="a litellm model string, e.g. openai/gpt-4o-mini")
    api_key: SecretStr | None = Field(
        None, description="bearer key for the endpoint or provider, e.g. ${KEY}"
    )
    system: str | None = Field(None, description="system prompt added when the request has none")
    params: GenerationParams = Field(
        default_factory=GenerationParams, description="default generation settings; a request's own win"
    )
    params_b: float | None = Field(None, gt=0, description="size in billions, for active-parameter reports")
    cost: float | None = Field(
        None, ge=0, description="price per million tokens (prompt + answer), for the trace store's cost"
    )
    timeout_s: float = Field(120.0, gt=0, description="longest wait for one HTTP request to the expert")
    retries: int = Field(2, ge=0, description="retries of a connection failure before falling back")
    memory_gb: float | None = Field(
        None, gt=0, description="memory it takes while loaded; None: estimated (GGUF size + KV cache)"
    )
    capabilities: list[Capability] | None = Field(
        None,
        description="what it serves: tools, tool_choice, json_schema, logprobs, vision, audio, file, "
        "reasoning; a request needing one it lacks is routed to another expert. None: detected from the "
        "engine once it runs (llama-server /props), else the engine's defaults (llama.cpp: json_schema, "
        "logprobs, and tools with a template that renders them; vLLM: json_schema, logprobs, tool_choice, "
        "and tools with --enable-auto-tool-choice); an endpoint or provider: every capability (the remote "
        "server decides)",
    )
    context_window: int | None = Field(
        None,
        ge=1,
        description="tokens one request may use, prompt plus answer; None: serve.ctx (llama.cpp) or "
        "serve.max_model_len (vLLM), or what the engine reports once it runs; unknown for an endpoint",
    )

    deploy: ExpertDeploy | None = Field(None, description="replicas and resources on a cluster (coe deploy)")

    @model_validator(mode="after")
    def _deploy_needs_serve(self) -> ExpertConfig:
        if self.deploy is not None and self.deploy.ray is not None and self.serve is None:
            raise ValueError("deploy.ray needs a serve: block (endpoint and provider experts run elsewhere)")
        return self

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
    def slots(self) -> int:
        """Concurrent calls to send it: the slots of the server CoE runs, else 8 for a server we do
        not know (an endpoint or provider queues the rest itself)."""
        return self.serve.parallel if self.serve is not None else 8

    @property
    def kind(self) -> Literal["serve", "endpoint", "provider"]:
        if self.serve is not None:
            return "serve"
        return "provider" if self.provider is not None else "endpoint"
