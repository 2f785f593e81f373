"""POST /v1/messages/count_tokens (Anthropic's): the request parsed as /v1/messages parses it, routed
as it would be (the model id, the router, the capability check; no session, cache or retrieval,
which belong to an answered turn), and counted without generating: with the chosen expert's own
chat template and tokenizer where its engine exposes them (llama-server's ``/apply-template`` and
``/tokenize``), else estimated as the capability check does (coe.capabilities.needs). The reply
says which in ``x-coe-token-count: exact|estimate`` and names the expert in ``x-coe-expert``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from coe.capabilities.needs import estimate_tokens
from coe.capabilities.restrict import restrict
from coe.errors import CoEError
from coe.orchestrator import CoE
from coe.pipeline.stages import pinned
from coe.server.apis.messages import ADAPTER
from coe.server.gateway import Gateway, error_for, resolve_model
from coe.server.settings import ServerSettings
from coe.types import Request

TIMEOUT_S = 30.0


async def reply(
    gateway: Gateway, data: Any, settings: ServerSettings, headers: Mapping[str, str]
) -> JSONResponse:
    noted = ADAPTER.headers(headers)
    if isinstance(data, dict) and "max_tokens" not in data:  # a count needs no answer budget
        data = {**data, "max_tokens": 1}
    call = ADAPTER.parse(data, settings, False)
    coe = gateway.coe
    expert, decision = resolve_model(coe, call.model)
    await gateway.readiness.require(routed=expert is None and decision is None)
    request = call.request
    try:
        if decision is None:
            decision = (
                pinned(coe.config, expert)
                if expert is not None
                else (await asyncio.to_thread(coe.decide, [request]))[0]
            )
        decision, _ = restrict(decision, request, coe.config, coe.pool.supervisor.detected)
    except CoEError as exc:
        raise error_for(exc, call.aliases) from None
    name = decision.experts[0]
    tokens = await exact_count(coe, name, request)
    how = "exact" if tokens is not None else "estimate"
    count = tokens if tokens is not None else estimate_tokens(request)
    return JSONResponse(
        {"input_tokens": count}, headers={**noted, "x-coe-expert": name, "x-coe-token-count": how}
    )


async def exact_count(coe: CoE, name: str, request: Request) -> int | None:
    """The prompt's tokens as the expert would read them: its chat template applied to the body it
    would be sent, then its tokenizer (special tokens added and parsed, as for a completion). None
    when the engine does not answer these (vLLM, a hosted provider) or is not up."""
    expert = coe.config.experts[name]
    if expert.provider is not None or (expert.serve is not None and expert.serve.engine != "llamacpp"):
        return None
    calls = coe.pipeline.calls
    payload = calls.payload(name, request)
    try:
        async with coe.pool.lease(name) as url:
            root = url.rstrip("/").removesuffix("/v1")
            post = calls.client.post_json
            applied = await post(name, f"{root}/apply-template", payload, TIMEOUT_S)
            body = {"content": applied["prompt"], "add_special": True, "parse_special": True}
            tokens = (await post(name, f"{root}/tokenize", body, TIMEOUT_S))["tokens"]
    except (CoEError, KeyError, TypeError):
        return None
    return len(tokens) if isinstance(tokens, list) else None
