"""CoE: the library's face. A thin facade over the one request path (coe.pipeline): it turns what a
caller gives (a prompt, a conversation, a Request, OpenAI's keywords) into a ``Flow``, runs it, and
owns the lifetime of what the pipeline uses (the expert pool, stores, its own event loop).

Nothing heavy happens at construction: the router (and with it the encoder) is built on first use,
experts start on first call, and the HTTP client is created inside the running event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from coe.config import CoEConfig, load_config
from coe.experts.calls import Slot
from coe.experts.pool import ExpertPool
from coe.pipeline import Flow, Parts, Pipeline
from coe.pipeline.parts import StoreKind
from coe.pipeline.stages import pinned
from coe.protocols import Aggregator, Router
from coe.types import (
    Answer,
    ExpertAnswer,
    Message,
    ReasoningEffort,
    Request,
    ResponseFormat,
    RouteDecision,
    SessionRef,
    StreamEvent,
    Tool,
    ToolChoice,
    Trace,
)

if TYPE_CHECKING:
    from coe.batch.runner import BatchReport
    from coe.retrieval.retriever import Retriever
    from coe.sessions import Sessions
    from coe.signals.cache.runtime import SemanticCache
    from coe.signals.stage import SignalStage
    from coe.traces import Feedback, Recorder, ThumbsValue

T = TypeVar("T")
Prompt = str | list[Message] | list[dict[str, Any]]


class CoE:
    def __init__(
        self, config: CoEConfig, *, session_store: StoreKind = "memory", traces: bool = False
    ) -> None:
        """``session_store``: where sessions and the cache live when the registry does not say (the
        library keeps them in memory; ``coe serve`` passes sqlite, so a restart keeps them).
        ``traces``: record each answer in the trace store (``traces:`` settings; ``Answer.trace.id``
        names the record for ``feedback``). ``coe serve`` records on its own, under its response ids."""
        self.config = config
        self.pool = ExpertPool(config)
        self.parts = Parts(config, self.pool, session_store, traces)
        self.pipeline = Pipeline(self.parts)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] = "experts.yaml") -> CoE:
        return cls(load_config(path))

    # ------------------------------------------------------------- the parts, built on first use

    @property
    def router(self) -> Router:
        return self.parts.router

    @property
    def aggregator(self) -> Aggregator:
        return self.parts.aggregator

    @property
    def retriever(self) -> Retriever | None:
        """The retrieval gate and index (coe/retrieval/); None without a ``retrieval`` block."""
        return self.parts.retriever

    @property
    def signals(self) -> SignalStage | None:
        """The checks before routing (coe/signals/); None without a guard or PII block."""
        return self.parts.signals

    @property
    def sessions(self) -> Sessions | None:
        """The conversation sessions (coe.sessions); None when ``router.sessions.enabled`` is false."""
        return self.parts.sessions

    @property
    def cache(self) -> SemanticCache | None:
        """The semantic response cache (coe.signals.cache); None without ``signals.cache``."""
        return self.parts.cache

    @property
    def recorder(self) -> Recorder | None:
        """The trace store's writer when this CoE records (``traces=True``)."""
        return self.parts.recorder

    def capabilities(self, name: str) -> frozenset[str]:
        """What expert ``name`` serves now: declared, else detected from its engine, else defaults."""
        return self.parts.capabilities(name)

    # ---------------------------------------------------------------------------------- routing

    def route(self, prompts: Sequence[Prompt] | Prompt) -> list[RouteDecision]:
        """Decide without generating (``coe route``): no expert is started.

        Takes one prompt (a string or one conversation) or a list of prompts."""
        one = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], Message | dict))
        batch = [prompts] if one else list(prompts)
        return self.decide([Request.from_input(p) for p in batch])  # type: ignore[arg-type]

    def decide(self, requests: Sequence[Request]) -> list[RouteDecision]:
        """Route requests without answering them: pinned ones (``Request.expert``) skip the router,
        the rest go to it in one batch. Synchronous and CPU-bound (the encoder); no expert starts.
        No signals, sessions or cache: this is what the router alone decides (``coe replay``)."""
        decisions = {i: pinned(self.config, r.expert) for i, r in enumerate(requests) if r.expert is not None}
        todo = [i for i in range(len(requests)) if i not in decisions]
        if todo:
            decisions.update(zip(todo, self.router.route([requests[i] for i in todo]), strict=True))
        return [decisions[i] for i in range(len(requests))]

    # -------------------------------------------------------------------------------- answering

    async def aask(self, prompt: Prompt | Request, **options: Any) -> Answer:
        """Answer one prompt: a string, a conversation (OpenAI-shaped messages) or a whole Request.

        Keywords: ``expert`` pins an expert; ``decision`` skips the router (the server's
        ``coe/category/NAME``); ``session`` names the conversation (without it, a resent history
        finds its own); ``trace`` is filled in as the request goes (a caller that wants the decision
        before the answer); ``slot`` is entered around each expert call of this request (the
        server's per-expert limit); ``tools``, ``tool_choice``, ``parallel_tool_calls``,
        ``response_format``, ``logprobs``, ``top_logprobs`` and ``reasoning_effort`` are OpenAI's Chat
        Completions fields; the rest are generation settings (max_tokens, temperature, ...) sent over
        the expert's defaults."""
        return await self.pipeline.answer(flow_of(prompt, **options))

    async def astream(self, prompt: Prompt | Request, **options: Any) -> AsyncIterator[StreamEvent]:
        """Yield deltas (text, tool-call fragments), then one ``done`` event with the full Answer and
        trace. Keywords as for ``aask``; with ``trace``, the decision (after the capability check) and
        the session are in it before the first event (the server's headers).

        A candidate that fails before its first delta is skipped for the next one; after it a failure
        raises ExpertError, since the caller already holds part of the answer."""
        async for event in self.pipeline.stream(flow_of(prompt, **options)):
            yield event

    async def call_expert(
        self, name: str, request: Request, trace: Trace | None = None, timeout_s: float | None = None
    ) -> ExpertAnswer:
        """Ask one expert; failures come back as an ExpertAnswer with ``error`` set, never raised.

        ``timeout_s`` bounds the whole call, a cold start included (the expert's own ``timeout_s``
        bounds each HTTP request)."""
        return await self.pipeline.calls.call(name, request, trace, timeout_s)

    def feedback(
        self,
        rid: str,
        score: float | None = None,
        *,
        thumbs: ThumbsValue | None = None,
        label: str | None = None,
    ) -> Feedback:
        """Grade a recorded answer (``Answer.trace.id``) with a score in [0, 1] or thumbs up/down.
        KeyError (coe.traces.UnknownTrace) when the store holds no such id."""
        from coe.traces import Feedback, Recorder, score_of

        item = Feedback(id=rid, score=score_of(score, thumbs), label=label)
        (self.recorder or Recorder(self.config, self.pool.state_dir)).feedback(item)
        return item

    # ----------------------------------------------------------------------- sync API, lifetime

    def ask(self, prompt: Prompt | Request, **options: Any) -> Answer:
        """``aask`` from sync code (the same keywords)."""
        return self.run(self.aask(prompt, **options))

    def batch(
        self, items: Iterable[Any], *, out: str | os.PathLike[str] | None = None, **options: Any
    ) -> BatchReport:
        """Answer many prompts, loading each expert once (see coe.batch): returns a BatchReport.

        ``items``: prompts, or dicts / ``BatchItem`` with ``id``, ``prompt`` or ``messages`` and an
        optional ``expert`` (pinned, not routed). With ``out``, each result is appended to that JSONL
        file as it finishes and a rerun skips the ids already there. ``options``: ``params``,
        ``concurrency``, ``observer``. In async code: ``await coe.batch.run_batch(coe, items, ...)``."""
        from coe.batch.runner import run_batch

        return self.run(run_batch(self.pipeline, items, out=None if out is None else Path(out), **options))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine from sync code on this CoE's own event loop. The HTTP client and the expert
        leases live on that loop, so sync callers that mix ``ask`` with their own coroutines (a batch
        of ``aask`` calls, ``pool.scheduler.warm()``) use this rather than ``asyncio.run``, which
        would give each its own loop."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def aclose(self) -> None:
        await self.pipeline.calls.aclose()
        await self.parts.aclose()
        self.pool.stop_all()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.pipeline.calls.aclose())
            self._loop.run_until_complete(self.parts.aclose())
            self._loop.close()
        else:
            self.parts.close_recorder()
        self.pool.stop_all()

    def __enter__(self) -> CoE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CoE:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def flow_of(
    prompt: Prompt | Request,
    *,
    expert: str | None = None,
    decision: RouteDecision | None = None,
    session: str | SessionRef | None = None,
    trace: Trace | None = None,
    slot: Slot | None = None,
    tools: Sequence[Tool | dict[str, Any]] | None = None,
    tool_choice: ToolChoice | dict[str, Any] | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: ResponseFormat | dict[str, Any] | None = None,
    logprobs: bool | None = None,
    top_logprobs: int | None = None,
    reasoning_effort: ReasoningEffort | None = None,
    **params: Any,
) -> Flow:
    """One Flow from what ``aask`` was given: a Request as is (keywords override its fields)."""
    given = {
        k: v
        for k, v in {
            "tools": tools,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel_tool_calls,
            "response_format": response_format,
            "logprobs": logprobs,
            "top_logprobs": top_logprobs,
            "reasoning_effort": reasoning_effort,
        }.items()
        if v is not None
    }
    if isinstance(prompt, Request):
        update: dict[str, Any] = {**given, "params": {**prompt.params, **params}}
        if expert is not None:
            update["expert"] = expert
        request = Request.model_validate({**prompt.model_dump(exclude_unset=True), **update})
    else:
        request = Request.from_input(prompt, expert=expert, params=params, **given)
    ref = SessionRef(id=session) if isinstance(session, str) else session
    return Flow(request, trace if trace is not None else Trace(), decision=decision, session=ref, slot=slot)
