"""CoE: the request path in one place. Route -> call the chosen expert (falling back in order) ->
aggregate -> Answer with a Trace.

Nothing heavy happens at construction: the router (and with it the encoder) is built on first use,
experts start on first call, and the HTTP client is created inside the running event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

from coe import registry
from coe.clients import ChatClient, provider_chat
from coe.config import CoEConfig, load_config
from coe.errors import AllExpertsFailed, ExpertError
from coe.protocols import Aggregator, Context, Router
from coe.serving.pool import ExpertPool
from coe.types import (
    Answer,
    Attempt,
    ExpertAnswer,
    Message,
    Request,
    RouteDecision,
    StreamEvent,
    Trace,
    Usage,
)

T = TypeVar("T")
Prompt = str | list[Message] | list[dict[str, str]]


class CoE:
    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        self.pool = ExpertPool(config)
        self._router: Router | None = None
        self._aggregator: Aggregator | None = None
        self._client = ChatClient()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] = "experts.yaml") -> CoE:
        return cls(load_config(path))

    # ------------------------------------------------------------------------- strategies (lazy)

    @property
    def router(self) -> Router:
        if self._router is None:
            factory = registry.load("routers", self.config.router.type)
            self._router = factory.from_config(self.config)
        return self._router

    @property
    def aggregator(self) -> Aggregator:
        if self._aggregator is None:
            factory = registry.load("aggregators", self.config.aggregator.type)
            self._aggregator = factory.from_options(self.config.aggregator.options)
        return self._aggregator

    # ------------------------------------------------------------------------------- routing only

    def route(self, prompts: Sequence[Prompt] | Prompt) -> list[RouteDecision]:
        """Decide without generating (``coe route``): no expert is started.

        Takes one prompt (a string or one conversation) or a list of prompts."""
        one = isinstance(prompts, str) or (
            bool(prompts) and isinstance(prompts[0], Message | dict)  # type: ignore[index]
        )
        batch = [prompts] if one else list(prompts)
        return self._decide([Request.from_input(p) for p in batch])  # type: ignore[arg-type]

    def _decide(self, requests: Sequence[Request]) -> list[RouteDecision]:
        decisions: list[RouteDecision | None] = [None] * len(requests)
        to_route = []
        for i, request in enumerate(requests):
            if request.expert is not None:
                if request.expert not in self.config.experts:
                    known = ", ".join(sorted(self.config.experts))
                    raise ExpertError(request.expert, f"no such expert; known: {known}")
                decisions[i] = RouteDecision(
                    router="pinned", experts=[request.expert], reason="expert pinned by the caller"
                )
            else:
                to_route.append(i)
        if to_route:
            routed = self.router.route([requests[i] for i in to_route])
            for i, decision in zip(to_route, routed, strict=True):
                decisions[i] = decision
        return [d for d in decisions if d is not None]

    # ------------------------------------------------------------------------------ answering

    async def aask(self, prompt: Prompt, *, expert: str | None = None, **params: Any) -> Answer:
        started = time.perf_counter()
        request = Request.from_input(prompt, expert=expert, params=params)
        trace = Trace()
        decision = await self._route_one(request, trace)
        errors: dict[str, str] = {}
        answers: list[ExpertAnswer] = []
        for name in decision.experts:
            answer = await self.call_expert(name, request, trace)
            if answer.ok:
                answers.append(answer)
                break
            errors[name] = answer.error or "unknown error"
        if not answers:
            raise AllExpertsFailed(errors)
        ctx = Context(decision=decision, trace=trace, call_expert=self.call_expert)
        t = time.perf_counter()
        result = await self.aggregator.combine(request, answers, ctx)
        trace.timings_ms["aggregate"] = _ms(t)
        self._finish(trace, decision, result.expert, result.usage, started)
        return result

    async def astream(
        self, prompt: Prompt, *, expert: str | None = None, **params: Any
    ) -> AsyncIterator[StreamEvent]:
        """Yield text deltas, then one ``done`` event with the full Answer and trace.

        A candidate that fails before its first token is skipped for the next one; after the first
        token a failure raises ExpertError, since the caller already holds part of the text.
        """
        started = time.perf_counter()
        request = Request.from_input(prompt, expert=expert, params=params)
        trace = Trace()
        decision = await self._route_one(request, trace)
        errors: dict[str, str] = {}
        for name in decision.experts:
            t = time.perf_counter()
            parts: list[str] = []
            usage = Usage()
            model: str | None = None
            try:
                async for chunk in self._stream_expert(name, request, trace):
                    model = chunk.get("model", model)
                    if chunk.get("usage"):
                        usage = Usage(**_usage_fields(chunk["usage"]))
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            parts.append(delta)
                            yield StreamEvent(type="delta", text=delta)
            except ExpertError as exc:
                trace.attempts.append(Attempt(expert=name, ok=False, error=exc.reason, latency_ms=_ms(t)))
                if parts:
                    raise
                errors[name] = exc.reason
                continue
            trace.attempts.append(Attempt(expert=name, ok=True, latency_ms=_ms(t)))
            trace.timings_ms[f"expert:{name}"] = _ms(t)
            self._finish(trace, decision, name, usage, started)
            answer = Answer(text="".join(parts), expert=name, model=model, usage=usage, trace=trace)
            yield StreamEvent(type="done", answer=answer)
            return
        raise AllExpertsFailed(errors)

    async def call_expert(self, name: str, request: Request, trace: Trace | None = None) -> ExpertAnswer:
        """Ask one expert; failures come back as an ExpertAnswer with ``error`` set, never raised."""
        t = time.perf_counter()
        try:
            data = await self._complete(name, request, trace)
            choice = (data.get("choices") or [{}])[0]
            answer = ExpertAnswer(
                expert=name,
                model=data.get("model"),
                text=(choice.get("message") or {}).get("content") or "",
                usage=Usage(**_usage_fields(data.get("usage") or {})),
                finish_reason=choice.get("finish_reason"),
                latency_ms=_ms(t),
            )
        except ExpertError as exc:
            answer = ExpertAnswer(expert=name, error=exc.reason, latency_ms=_ms(t))
        if trace is not None:
            trace.attempts.append(
                Attempt(expert=name, ok=answer.ok, error=answer.error, latency_ms=answer.latency_ms)
            )
            trace.timings_ms[f"expert:{name}"] = answer.latency_ms
        return answer

    async def _complete(self, name: str, request: Request, trace: Trace | None = None) -> dict[str, Any]:
        expert = self.config.experts[name]
        payload = self._payload(name, request)
        key = expert.api_key.get_secret_value() if expert.api_key else None
        if expert.provider is not None:
            return await provider_chat(name, expert.provider, payload, key, expert.timeout_s, expert.endpoint)
        url = await self._locate(name, trace)
        return await self._client.chat(
            name, url, payload, api_key=key, timeout_s=expert.timeout_s, retries=expert.retries
        )

    async def _stream_expert(
        self, name: str, request: Request, trace: Trace
    ) -> AsyncIterator[dict[str, Any]]:
        expert = self.config.experts[name]
        if expert.provider is not None:  # litellm streaming is not on the local path; answer whole
            data = await self._complete(name, request, trace)
            text = ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            yield {
                "model": data.get("model"),
                "choices": [{"delta": {"content": text}}],
                "usage": data.get("usage"),
            }
            return
        url = await self._locate(name, trace)
        key = expert.api_key.get_secret_value() if expert.api_key else None
        async for chunk in self._client.stream(
            name,
            url,
            self._payload(name, request),
            api_key=key,
            timeout_s=expert.timeout_s,
            retries=expert.retries,
        ):
            yield chunk

    async def _locate(self, name: str, trace: Trace | None) -> str:
        """The expert's URL; waiting for a cold start shows up in the trace as ``start:<expert>``."""
        t, starts = time.perf_counter(), self.pool.starts.get(name, 0)
        url = await self.pool.url_for(name)
        if trace is not None and self.pool.starts.get(name, 0) > starts:
            trace.timings_ms[f"start:{name}"] = _ms(t)
        return url

    def _payload(self, name: str, request: Request) -> dict[str, Any]:
        expert = self.config.experts[name]
        messages = [m.model_dump() for m in request.messages]
        if expert.system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": expert.system})
        defaults = expert.params.model_dump(exclude_none=True, exclude={"extra"})
        return {
            "model": expert.model or name,
            "messages": messages,
            **expert.params.extra,
            **defaults,
            **request.params,
        }

    async def _route_one(self, request: Request, trace: Trace) -> RouteDecision:
        t = time.perf_counter()
        # The encoder is CPU-bound; off the loop so a server keeps serving while it runs.
        decision = (await asyncio.to_thread(self._decide, [request]))[0]
        trace.timings_ms["route"] = _ms(t)
        trace.decision = decision
        return decision

    def _finish(self, trace: Trace, decision: RouteDecision, used: str, usage: Usage, started: float) -> None:
        trace.fallback_used = used != decision.experts[0]
        trace.usage = usage
        trace.active_params_b = self.config.experts[used].params_b
        trace.timings_ms["total"] = _ms(started)

    # ----------------------------------------------------------------------- sync API, lifetime

    def ask(self, prompt: Prompt, *, expert: str | None = None, **params: Any) -> Answer:
        return self._run(self.aask(prompt, expert=expert, **params))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def aclose(self) -> None:
        await self._client.aclose()
        self.pool.stop_all()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()
        self.pool.stop_all()

    def __enter__(self) -> CoE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CoE:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _usage_fields(usage: dict[str, Any]) -> dict[str, int]:
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
