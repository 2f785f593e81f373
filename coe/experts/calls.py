"""One call to one expert: the Chat Completions body (the caller's request over the expert's
defaults), slot and a lease on a managed process, the HTTP call or the provider's, and the reply
read into an ``ExpertAnswer``. The orchestrator decides *which* experts to call and in what order;
this module knows *how* a call is made, so the request path reads as routing and falling back.

Failures come back as answers with ``error`` set, never raised: the orchestrator falls back on them.
The HTTP client is created inside the running event loop on first use (``coe.clients``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from coe.capabilities import forced as forced_calls
from coe.clients import ChatClient, provider_chat
from coe.clock import ms_since
from coe.config import CoEConfig, ExpertConfig
from coe.errors import BadReply, ExpertError
from coe.experts.pool import ExpertPool
from coe.experts.templates import strip_markers, turn_markers, with_turn_stops
from coe.replies import read_reply
from coe.types import Attempt, ExpertAnswer, Request, Trace

# Entered around each call to one expert (the server's per-expert concurrency limit); an exception
# other than ExpertError raised on entry ends the request instead of falling back.
Slot = Callable[[str], AbstractAsyncContextManager[object]]

# Request fields CoE acts on (capabilities, forced tool calls), sent to the expert when set.
OPTIONS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
)

# What an engine applies to a setting neither the request nor the expert gives: llama-server's own
# defaults for the experts CoE runs with it, OpenAI's API defaults for any other server.
OPENAI_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
ENGINE_DEFAULTS: dict[str | None, dict[str, Any]] = {
    "llamacpp": {**OPENAI_DEFAULTS, "temperature": 0.8, "top_p": 0.95},
}


class ExpertCalls:
    """The calls of one CoE. ``capabilities`` says what an expert serves now (declared, else detected
    from its engine): a forced tool call it would ignore is enforced here through a JSON schema."""

    def __init__(
        self, config: CoEConfig, pool: ExpertPool, capabilities: Callable[[str], frozenset[str]]
    ) -> None:
        self.config = config
        self.pool = pool
        self.capabilities = capabilities
        self.client = ChatClient()

    def enforces(self, name: str, request: Request) -> bool:
        """CoE forces the tool call itself: the request requires one and the engine would not."""
        return request.forced_tool and "tool_choice" not in self.capabilities(name)

    async def call(
        self,
        name: str,
        request: Request,
        trace: Trace | None = None,
        timeout_s: float | None = None,
        slot: Slot | None = None,
    ) -> ExpertAnswer:
        """Ask one expert. ``timeout_s`` bounds the whole call, a cold start included (the expert's
        own ``timeout_s`` bounds each HTTP request); ``slot``: this request's, over the default."""
        t = time.perf_counter()
        enforced = self.enforces(name, request)
        markers = turn_markers(self.config.experts.get(name))
        try:
            async with self.in_slot(name, slot):
                call = self.complete(name, request, trace)
                data = await (asyncio.wait_for(call, timeout_s) if timeout_s else call)
            reply = read_reply(name, data, request)
            text, calls, finish = strip_markers(reply.text, markers), reply.tool_calls, reply.finish_reason
            if enforced:  # the reply is the call's JSON, constrained by coe.capabilities.forced
                calls, text, finish = [forced_calls.parse_call(name, text, request)], "", "tool_calls"
                if trace is not None and trace.capabilities is not None:
                    trace.capabilities.enforced_tool_choice = True
            answer = ExpertAnswer(
                expert=name,
                model=reply.model,
                text=text,
                tool_calls=calls,
                usage=reply.usage,
                finish_reason=finish,
                latency_ms=ms_since(t),
                logprobs=reply.logprobs,
                reasoning=reply.reasoning,
            )
        except ExpertError as exc:
            answer = ExpertAnswer(
                expert=name, error=exc.reason, latency_ms=ms_since(t), bad_reply=isinstance(exc, BadReply)
            )
        except TimeoutError:
            answer = ExpertAnswer(
                expert=name, error=f"no answer within {timeout_s:g}s", latency_ms=ms_since(t)
            )
        if trace is not None:
            trace.attempts.append(
                Attempt(expert=name, ok=answer.ok, error=answer.error, latency_ms=answer.latency_ms)
            )
            trace.timings_ms[f"expert:{name}"] = answer.latency_ms
        return answer

    def in_slot(self, name: str, slot: Slot | None = None) -> AbstractAsyncContextManager[object]:
        """The slot for one call to ``name``: the request's own (the server's per-expert limit),
        else none (the library)."""
        return slot(name) if slot is not None else nullcontext()

    async def complete(self, name: str, request: Request, trace: Trace | None = None) -> dict[str, Any]:
        """The expert's whole reply as its Chat Completions JSON (``ExpertError`` on failure)."""
        expert = self.config.experts[name]
        payload = self.payload(name, request)
        key = expert.api_key.get_secret_value() if expert.api_key else None
        if expert.provider is not None:
            return await provider_chat(name, expert.provider, payload, key, expert.timeout_s, expert.endpoint)
        async with self._lease(name, trace) as url:
            return await self.client.chat(
                name, url, payload, api_key=key, timeout_s=expert.timeout_s, retries=expert.retries
            )

    async def stream(self, name: str, request: Request, trace: Trace) -> AsyncIterator[dict[str, Any]]:
        """The expert's reply as Chat Completions stream chunks, turn markers taken out."""
        expert = self.config.experts[name]
        if expert.provider is not None:  # litellm streaming is not on the local path; answer whole
            data = await self.complete(name, request, trace)
            choice = (data.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
            yield {
                "model": data.get("model"),
                "choices": [{"delta": delta, "finish_reason": choice.get("finish_reason")}],
                "usage": data.get("usage"),
            }
            return
        key = expert.api_key.get_secret_value() if expert.api_key else None
        markers = turn_markers(expert)
        async with self._lease(name, trace) as url:
            payload = self.payload(name, request)
            chunks = self.client.stream(
                name, url, payload, api_key=key, timeout_s=expert.timeout_s, retries=expert.retries
            )
            while True:
                try:
                    chunk = await anext(chunks, None)
                except (ValueError, AttributeError, TypeError) as exc:  # not JSON, or no object
                    raise BadReply(name, f"the stream is not chat completion chunks: {exc}") from None
                if chunk is None:
                    return
                if markers:
                    _strip_chunk(chunk, markers)
                yield chunk

    @asynccontextmanager
    async def _lease(self, name: str, trace: Trace | None) -> AsyncIterator[str]:
        """Hold the expert for one call; waiting for a load (a cold start or a wake from sleep) shows in
        the trace as ``start:NAME``."""
        t, loads = time.perf_counter(), self.pool.scheduler.loads.get(name, 0)
        async with self.pool.lease(name) as url:
            if trace is not None and self.pool.scheduler.loads.get(name, 0) > loads:
                trace.timings_ms[f"start:{name}"] = ms_since(t)
            yield url

    def settings(self, name: str, request: Request) -> dict[str, Any]:
        """The generation settings expert ``name`` applies to ``request``: the request's, over the
        expert's defaults, over the engine's own (``ENGINE_DEFAULTS``), for replies that report them
        (the Responses API's temperature, top_p, max_output_tokens...)."""
        expert = self.config.experts.get(name)
        if expert is None:  # not an expert of this registry (a stream that failed before answering)
            return {**OPENAI_DEFAULTS, **request.params}
        engine = expert.serve.engine if expert.serve is not None else None
        return {**ENGINE_DEFAULTS.get(engine, OPENAI_DEFAULTS), **_chosen(expert, request)}

    def payload(self, name: str, request: Request) -> dict[str, Any]:
        """The Chat Completions body for one expert: the request's messages and fields as the caller
        sent them, over the expert's defaults. Three changes, all for engines CoE runs: ``developer``
        becomes ``system`` (chat templates know no developer role), a forced tool choice the engine
        would ignore becomes a JSON schema (coe.capabilities.forced), and an expert that is a LoRA
        adapter of a shared process selects its adapter (coe.experts.groups)."""
        expert = self.config.experts[name]
        managed = expert.serve is not None
        messages = [m.payload() for m in request.messages]
        if managed:
            messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
        if expert.system and not any(m["role"] in ("system", "developer") for m in messages):
            messages.insert(0, {"role": "system", "content": expert.system})
        payload: dict[str, Any] = {
            "model": expert.model or name,
            "messages": messages,
            **_chosen(expert, request),
        }
        for key in OPTIONS:
            value = getattr(request, key)
            if isinstance(value, list):
                payload[key] = [v.model_dump(exclude_none=True, by_alias=True) for v in value]
            elif hasattr(value, "model_dump"):
                payload[key] = value.model_dump(exclude_none=True, by_alias=True)
            elif value is not None:
                payload[key] = value
        payload.update(self.pool.groups.request_fields(name))
        if self.enforces(name, request):
            payload = forced_calls.constrain(payload, request)
        return with_turn_stops(payload, turn_markers(expert))  # the template's turns end an answer

    async def aclose(self) -> None:
        await self.client.aclose()


def _chosen(expert: ExpertConfig, request: Request) -> dict[str, Any]:
    """The generation settings that go with a request: its own over the expert's ``params:``."""
    defaults = expert.params.model_dump(exclude_none=True, exclude={"extra"})
    return {**expert.params.extra, **defaults, **request.params}


def _strip_chunk(chunk: dict[str, Any], markers: tuple[str, ...]) -> None:
    """Turn markers out of a stream chunk's text (see coe.experts.templates)."""
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            delta["content"] = strip_markers(delta["content"], markers)
