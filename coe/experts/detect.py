"""What a running engine says it can do: llama-server's ``/props`` (chat-template capabilities,
modalities, the context of one slot) and vLLM's ``/v1/models`` (``max_model_len``).

Read once when the pool has started (or adopted) an expert; routing uses it over the defaults of the
engine, and a ``capabilities:`` list in experts.yaml wins over both (coe/capabilities/experts.py).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import BaseModel

log = logging.getLogger(__name__)


class Detected(BaseModel):
    """``capabilities`` None: the engine does not say (routing keeps the engine's defaults)."""

    capabilities: frozenset[str] | None = None
    context_window: int | None = None
    source: str


def from_llama_props(props: dict[str, Any]) -> Detected:
    """llama-server always enforces a JSON schema (a grammar) and returns logprobs; tools need a Jinja
    template that renders them, which is what ``chat_template_caps.supports_tools`` reports."""
    caps = {"json_schema", "logprobs"}
    template = props.get("chat_template_caps") or {}
    if template.get("supports_tools"):
        caps.add("tools")
    if template.get("supports_reasoning_effort"):
        caps.add("reasoning")
    modalities = props.get("modalities") or {}
    if modalities.get("vision"):
        caps.add("vision")
    if modalities.get("audio"):
        caps.add("audio")
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
    return Detected(
        capabilities=frozenset(caps),
        context_window=int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None,
        source="llama-server /props",
    )


def from_vllm_models(models: dict[str, Any]) -> Detected:
    data = models.get("data") or [{}]
    length = data[0].get("max_model_len") if isinstance(data[0], dict) else None
    return Detected(
        context_window=int(length) if isinstance(length, int) and length > 0 else None,
        source="vLLM /v1/models",
    )


async def detect(engine: str, root: str) -> Detected | None:
    """Ask the engine at ``root`` (its URL without /v1); None when it does not answer as expected,
    which leaves routing on the defaults rather than failing a start that worked."""
    path, parse = ("/props", from_llama_props) if engine == "llamacpp" else ("/v1/models", from_vllm_models)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            resp = await client.get(root.rstrip("/") + path, timeout=5.0)
        if resp.status_code == 200 and isinstance(body := resp.json(), dict):
            return parse(body)
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("could not read %s%s: %s", root, path, exc)
    return None
