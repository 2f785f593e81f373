"""CoE: the request path in one place. Route -> call the chosen expert (falling back in order) ->
aggregate -> Answer with a Trace.

Nothing heavy happens at construction: the router (and with it the encoder) is built on first use,
experts start on first call, and the HTTP client is created inside the running event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from coe import plugins
from coe.capabilities import expert_capabilities, restrict
from coe.capabilities import forced as forced_calls
from coe.config import CoEConfig, load_config
from coe.config.routing import PluginAggregatorConfig
from coe.encoding.embedder import request_scope
from coe.errors import AllExpertsFailed, ExpertError
from coe.experts.calls import Admission, ExpertCalls
from coe.experts.pool import ExpertPool
from coe.protocols import Aggregator, AggregatorFactory, AsyncRouter, Context, Router, StreamingAggregator
from coe.replies import StreamedReply
from coe.types import (
    Answer,
    Attempt,
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
    Usage,
)

if TYPE_CHECKING:
    from coe.batch.runner import BatchReport
    from coe.retrieval.retriever import Retriever
    from coe.sessions import Sessions, Turn
    from coe.signals.cache.runtime import Pending, SemanticCache
    from coe.signals.stage import SignalStage
    from coe.traces import Feedback, Recorder, ThumbsValue

T = TypeVar("T")
Prompt = str | list[Message] | list[dict[str, Any]]


class CoE:
    def __init__(
        self,
        config: CoEConfig,
        *,
        session_store: Literal["memory", "sqlite", "redis"] = "memory",
        traces: bool = False,
    ) -> None:
        """``session_store``: where sessions live when ``router.sessions.store`` does not say (the
        library keeps them in memory; ``coe serve`` passes sqlite, so a restart keeps them).
        ``traces``: record each answer in the trace store (``traces:`` settings; ``Answer.trace.id``
        names the record for ``feedback``). ``coe serve`` records on its own, under its response ids."""
        self.config = config
        self._traces = traces
        self._recorder: Recorder | None = None
        self.pool = ExpertPool(config)
        self._session_store = session_store
        self._sessions: Sessions | None = None
        self._sessions_lock = threading.Lock()
        self._cache: SemanticCache | None = None
        self._cache_built = False
        self._router: Router | None = None
        self._aggregator: Aggregator | None = None
        self._retriever: Retriever | None = None
        self._signals_stage: SignalStage | None = None
        self._calls = ExpertCalls(self.config, self.pool, self.capabilities)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] = "experts.yaml") -> CoE:
        return cls(load_config(path))

    @property
    def admission(self) -> Admission | None:
        """The default admission, entered around each call to one expert when the request brings none
        of its own (``aask(admission=...)``); an exception other than ExpertError raised on entry ends
        the request instead of falling back."""
        return self._calls.admission

    @admission.setter
    def admission(self, value: Admission | None) -> None:
        self._calls.admission = value

    # ------------------------------------------------------------------------- strategies (lazy)

    @property
    def router(self) -> Router:
        if self._router is None:
            self._router = plugins.router_factory(self.config.router.type).from_config(self.config)
        return self._router

    @property
    def sessions(self) -> Sessions | None:
        """The conversation sessions (coe.sessions); None when ``router.sessions.enabled`` is false."""
        if self._sessions is None and self.config.router.sessions.enabled:
            with self._sessions_lock:  # concurrent first requests build it once
                if self._sessions is None:
                    from coe.sessions import build_sessions

                    self._sessions = build_sessions(self.config, self._session_store, self.pool.state_dir)
        return self._sessions

    async def asessions(self) -> Sessions | None:
        """``sessions`` from async code: the first call builds them (it may load the encoder) off the
        event loop."""
        if self._sessions is not None:
            return self._sessions
        return await asyncio.to_thread(lambda: self.sessions)

    @property
    def cache(self) -> SemanticCache | None:
        """The semantic response cache (coe.signals.cache); None without ``signals.cache``. Its
        default store follows the sessions': memory for the library, sqlite for ``coe serve``."""
        if not self._cache_built:
            with self._sessions_lock:
                if not self._cache_built:
                    from coe.signals.cache.runtime import build_cache

                    self._cache = build_cache(self.config, self._session_store, self.pool.state_dir)
                    self._cache_built = True
        return self._cache

    @property
    def recorder(self) -> Recorder | None:
        """The trace store's writer when this CoE records (``traces=True``)."""
        if self._recorder is None and self._traces:
            from coe.traces import Recorder

            self._recorder = Recorder(self.config, self.pool.state_dir)
        return self._recorder

    def _record(self, request: Request, answer: Answer) -> None:
        if self._traces and (recorder := self.recorder) is not None:
            from coe.traces import new_id

            answer.trace.id = new_id()
            recorder.record(answer.trace.id, request, answer, api="library")

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
        recorder = self.recorder or Recorder(self.config, self.pool.state_dir)
        recorder.feedback(item)
        return item

    @property
    def aggregator(self) -> Aggregator:
        if self._aggregator is None:
            cfg = self.config.aggregator
            factory = plugins.aggregator_factory(cfg.type)
            if isinstance(factory, AggregatorFactory):
                self._aggregator = factory.from_config(cfg)
            else:  # a plug-in written against the free options mapping
                self._aggregator = factory.from_options(
                    cfg.options if isinstance(cfg, PluginAggregatorConfig) else {}
                )
        return self._aggregator

    # ------------------------------------------------------------------------------- routing only

    def route(self, prompts: Sequence[Prompt] | Prompt) -> list[RouteDecision]:
        """Decide without generating (``coe route``): no expert is started.

        Takes one prompt (a string or one conversation) or a list of prompts."""
        one = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], Message | dict))
        batch = [prompts] if one else list(prompts)
        return self.decide([Request.from_input(p) for p in batch])  # type: ignore[arg-type]

    def decide(self, requests: Sequence[Request]) -> list[RouteDecision]:
        """Route requests without answering them: pinned ones (``Request.expert``) skip the router,
        the rest go to it in one batch. Synchronous and CPU-bound (the encoder); no expert starts."""
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

    @property
    def retriever(self) -> Retriever | None:
        """The retrieval gate and index (coe/retrieval.py); None without a ``retrieval`` block."""
        if self._retriever is None and self.config.retrieval is not None:
            from coe.retrieval.retriever import Retriever

            self._retriever = Retriever(self.config)
        return self._retriever

    @property
    def signals(self) -> SignalStage | None:
        """The checks before routing (coe/signals); None without a ``signals`` block."""
        wanted = self.config.signals.guard is not None or self.config.signals.pii is not None
        if self._signals_stage is None and wanted:
            from coe.signals.stage import SignalStage

            self._signals_stage = SignalStage(self.config)
        return self._signals_stage

    async def _signals(
        self, request: Request, trace: Trace, decision: RouteDecision | None
    ) -> tuple[Request, RouteDecision | None]:
        """Before routing: the guard and PII verdicts go in the trace; a ``block`` raises
        RequestBlocked (no expert is called), a ``route`` replaces the decision, ``redact`` the request."""
        stage = self.signals
        if stage is None:
            return request, decision
        t = time.perf_counter()
        request, trace.signals = await asyncio.to_thread(stage.run, request)
        trace.timings_ms["signals"] = _ms(t)
        return request, self._signal_outcome(stage, trace, decision)

    def _signal_outcome(
        self, stage: SignalStage, trace: Trace, decision: RouteDecision | None
    ) -> RouteDecision | None:
        signals = trace.signals
        assert signals is not None
        if signals.blocked_by is not None:
            raise stage.blocked(signals)
        if signals.routed_to is not None:
            fired = next(v for v in signals.verdicts if v.action == "route")
            return RouteDecision(
                router="signals",
                experts=[signals.routed_to],
                reason=f"signal {fired.signal} found {fired.verdict}: action route to {signals.routed_to}",
            )
        return decision

    async def _retrieve(self, request: Request, decision: RouteDecision, trace: Trace) -> Request:
        """After routing, before answering: the gate decides, and kept documents go into the prompt.
        Never raises for a failed retrieval: the request goes on without documents, the trace says why."""
        if self.retriever is None:
            return request
        t = time.perf_counter()
        # Embedding and search are CPU-bound: off the loop, like routing.
        before = request
        request, trace.retrieval = await asyncio.to_thread(self.retriever.run, request, decision)
        trace.timings_ms["retrieve"] = _ms(t)
        stage = self.signals
        if stage is not None and trace.signals is not None and request is not before:
            # Retrieved chunks enter the prompt here: the guard reads them before any expert does.
            await asyncio.to_thread(stage.check_documents, before, request, trace.signals)
            if trace.signals.blocked_by is not None:
                raise stage.blocked(trace.signals)
        return request

    # ------------------------------------------------------------------------------ answering

    async def aask(
        self,
        prompt: Prompt | Request,
        *,
        expert: str | None = None,
        decision: RouteDecision | None = None,
        session: str | SessionRef | None = None,
        trace: Trace | None = None,
        tools: Sequence[Tool | dict[str, Any]] | None = None,
        tool_choice: ToolChoice | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: ResponseFormat | dict[str, Any] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        reasoning_effort: ReasoningEffort | None = None,
        admission: Admission | None = None,
        **params: Any,
    ) -> Answer:
        """Answer one prompt: a string, a conversation (OpenAI-shaped messages) or a whole Request.
        ``decision`` skips the router (the server's ``coe/category/NAME``). ``session`` names the
        conversation (without it, a resent history finds its own); ``trace`` is filled in as the
        request goes (a caller that wants the decision before the answer). ``tools`` and the other
        keywords are OpenAI's Chat Completions fields; ``params`` are generation settings (max_tokens,
        temperature, ...) sent over the expert's defaults. ``admission`` is entered around each call to
        one expert for this request (the server's per-request limit), instead of ``self.admission``."""
        started = time.perf_counter()
        request = make_request(
            prompt,
            expert,
            params,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            reasoning_effort=reasoning_effort,
        )
        trace = trace if trace is not None else Trace()
        asked = _asked(request, decision)
        with request_scope():  # the router, the session, the cache and the retrieval gate embed it once
            request, decision = await self._signals(request, trace, decision)
            original = request  # after PII redaction, before retrieval: what the trace store keeps
            turn = await self._open_session(request, session, trace)
            decision = await self._route_one(request, trace, decision, turn, admission)
            cached, pending = await self._cache_lookup(request, asked, decision, trace)
            if cached is None:
                request = await self._retrieve(request, decision, trace)
        if cached is not None:
            self._finish_replay(trace, cached, started)
            await self._close_session(turn, request, cached, decision)
            self._record(original, cached)
            return cached
        decision = self._restrict(request, decision, trace)
        answers = await self._answers(request, decision, trace, admission)
        answer = await self.combine(request, answers, decision, trace, started, admission)
        await self._close_session(turn, request, answer, decision)
        await self._cache_put(pending, answer, trace)
        self._record(original, answer)
        return answer

    async def _cache_lookup(
        self, request: Request, asked: str, decision: RouteDecision, trace: Trace
    ) -> tuple[Answer | None, Pending | None]:
        """Inside the request scope, after routing: the router's vector of the prompt is there to reuse.
        A store failure is a miss with a note (``trace.cache.status == "error"``), never a failure."""
        cache = self.cache
        if cache is None:
            return None, None
        from coe.signals.cache.runtime import router_embedding

        expert = decision.experts[0] if decision.experts else None
        known = self.config.experts
        temperature = known[expert].params.temperature if expert is not None and expert in known else None
        embedding = router_embedding(self._router, request) if self._router is not None else None
        trace.cache, answer, pending = await cache.lookup(request, asked, embedding, temperature)
        trace.timings_ms["cache"] = trace.cache.lookup_ms
        return answer, pending

    async def _cache_put(self, pending: Pending | None, answer: Answer, trace: Trace) -> None:
        if pending is None or self._cache is None:
            return
        error = await self._cache.put(pending, answer)
        if error is not None and trace.cache is not None:
            trace.cache.error = error
            trace.cache.reason += "; the answer could not be stored"

    def _finish_replay(self, trace: Trace, answer: Answer, started: float) -> None:
        """A replayed answer: no expert was called, so no attempts, no fallback."""
        trace.usage = answer.usage
        trace.fallback_used = False
        trace.timings_ms["total"] = _ms(started)
        answer.trace = trace

    def _restrict(self, request: Request, decision: RouteDecision, trace: Trace) -> RouteDecision:
        """Only experts that can serve the request stay candidates (coe/capabilities/restrict.py)."""
        decision, trace.capabilities = restrict(decision, request, self.config, self.pool.detected)
        trace.decision = decision
        return decision

    def capabilities(self, name: str) -> frozenset[str]:
        """What expert ``name`` serves now: declared, else detected from its engine, else defaults."""
        return expert_capabilities(self.config.experts[name], self.pool.detected.get(name))[0]

    async def combine(
        self,
        request: Request,
        answers: list[ExpertAnswer],
        decision: RouteDecision,
        trace: Trace,
        started: float,
        admission: Admission | None = None,
    ) -> Answer:
        """The aggregator merges the answers; the trace gets its time and the totals. For callers that
        collect the answers their own way (the batch runner); ``started`` is ``time.perf_counter()``
        when the request began, for the trace's total."""
        ctx = Context(decision=decision, trace=trace, call_expert=self._coe_caller(admission))
        t = time.perf_counter()
        result = await self.aggregator.combine(request, answers, ctx)
        trace.timings_ms["aggregate"] = _ms(t)
        self._finish(trace, decision, result.expert, result.usage, started)
        return result

    async def _answers(
        self, request: Request, decision: RouteDecision, trace: Trace, admission: Admission | None = None
    ) -> list[ExpertAnswer]:
        """The recruited experts answer concurrently, each within its timeout; only if none of them
        could answer are the remaining candidates tried, one at a time, in order. Failed answers stay
        in the list (``error`` set) so the aggregator and the trace can say who did not answer."""
        recruited = decision.recruited
        timeout = self.config.aggregator.timeout_s if len(recruited) > 1 else None
        answers = list(
            await asyncio.gather(
                *(self.call_expert(n, request, trace, timeout, admission) for n in recruited)
            )
        )
        if any(a.ok for a in answers):
            return answers
        for name in decision.experts[decision.fanout :]:
            answer = await self.call_expert(name, request, trace, admission=admission)
            answers.append(answer)
            if answer.ok:
                return answers
        raise AllExpertsFailed({a.expert: a.error or "unknown error" for a in answers})

    async def astream(
        self,
        prompt: Prompt | Request,
        *,
        expert: str | None = None,
        decision: RouteDecision | None = None,
        session: str | SessionRef | None = None,
        tools: Sequence[Tool | dict[str, Any]] | None = None,
        tool_choice: ToolChoice | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: ResponseFormat | dict[str, Any] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        reasoning_effort: ReasoningEffort | None = None,
        trace: Trace | None = None,
        admission: Admission | None = None,
        **params: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Yield deltas (text, tool-call fragments), then one ``done`` event with the full Answer and
        trace. Arguments as for ``aask``; ``trace``: a Trace to fill in, for a caller that needs the
        final decision (after the capability check) before the stream ends (the server's headers).

        A candidate that fails before its first delta is skipped for the next one; after it a failure
        raises ExpertError, since the caller already holds part of the answer. ``session`` as for
        ``aask``; the session and the routing decision are in ``trace`` before the first event.
        """
        started = time.perf_counter()
        request = make_request(
            prompt,
            expert,
            params,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            reasoning_effort=reasoning_effort,
        )
        trace = trace if trace is not None else Trace()
        asked = _asked(request, decision)
        with request_scope():  # the router, the session, the cache and the retrieval gate embed it once
            request, decision = await self._signals(request, trace, decision)
            original = request  # after PII redaction, before retrieval: what the trace store keeps
            turn = await self._open_session(request, session, trace)
            decision = await self._route_one(request, trace, decision, turn, admission)
            cached, pending = await self._cache_lookup(request, asked, decision, trace)
            if cached is None:
                request = await self._retrieve(request, decision, trace)
        if cached is not None:  # a replay streams too: deltas, then done
            from coe.signals.cache.runtime import replay_events

            self._finish_replay(trace, cached, started)
            for event in replay_events(cached, trace):
                if event.type == "done":
                    await self._close_session(turn, request, cached, decision)
                    self._record(original, cached)
                yield event
            return
        decision = self._restrict(request, decision, trace)
        stream = self._stream_aggregate if decision.fanout > 1 else self._stream_candidates
        async for event in stream(request, decision, trace, started, admission):
            if event.type == "done" and event.answer is not None:
                await self._close_session(turn, request, event.answer, decision)
                await self._cache_put(pending, event.answer, trace)
                self._record(original, event.answer)
            yield event

    async def _stream_candidates(
        self,
        request: Request,
        decision: RouteDecision,
        trace: Trace,
        started: float,
        admission: Admission | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """One answering expert: candidates in order until one streams its first delta."""
        errors: dict[str, str] = {}
        for name in decision.experts:
            t = time.perf_counter()
            reply = StreamedReply(
                name,
                request,
                forced_calls.CallStream(name, request) if self._calls.enforces(name, request) else None,
            )
            try:
                async for chunk in self._calls.stream(name, request, trace, admission):
                    for event in reply.take(chunk):
                        yield event
                for event in reply.close():
                    yield event
            except ExpertError as exc:
                trace.attempts.append(Attempt(expert=name, ok=False, error=exc.reason, latency_ms=_ms(t)))
                if reply.started:
                    raise
                errors[name] = exc.reason
                continue
            if reply.forced is not None and trace.capabilities is not None:
                trace.capabilities.enforced_tool_choice = True
            trace.attempts.append(Attempt(expert=name, ok=True, latency_ms=_ms(t)))
            trace.timings_ms[f"expert:{name}"] = _ms(t)
            self._finish(trace, decision, name, reply.usage, started)
            yield StreamEvent(type="done", answer=reply.answer(trace))
            return
        raise AllExpertsFailed(errors)

    async def _stream_aggregate(
        self,
        request: Request,
        decision: RouteDecision,
        trace: Trace,
        started: float,
        admission: Admission | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Several experts: their answers are collected whole, then the aggregator's answer streams
        (token by token when it can, e.g. an LLM synthesis; otherwise as one delta)."""
        answers = await self._answers(request, decision, trace, admission)
        ctx = Context(
            decision=decision,
            trace=trace,
            call_expert=self._coe_caller(admission),
            stream_expert=partial(self._stream_pinned, admission=admission),
        )
        t = time.perf_counter()
        aggregator = self.aggregator
        if isinstance(aggregator, StreamingAggregator):
            events = aggregator.stream(request, answers, ctx)
        else:
            events = _whole(await aggregator.combine(request, answers, ctx))
        async for event in events:
            if event.type == "done" and event.answer is not None:
                trace.timings_ms["aggregate"] = _ms(t)
                self._finish(trace, decision, event.answer.expert, event.answer.usage, started)
            yield event

    def _stream_pinned(
        self, name: str, request: Request, admission: Admission | None = None
    ) -> AsyncIterator[StreamEvent]:
        """One expert's answer, streamed: an aggregator's synthesis in ``astream``. No routing and no
        retrieval: the request it gets was already routed and holds any documents."""
        decision = RouteDecision(router="pinned", experts=[name], reason="called by the aggregator")
        trace = Trace(decision=decision)
        return self._stream_candidates(request, decision, trace, time.perf_counter(), admission)

    async def call_expert(
        self,
        name: str,
        request: Request,
        trace: Trace | None = None,
        timeout_s: float | None = None,
        admission: Admission | None = None,
    ) -> ExpertAnswer:
        """Ask one expert; failures come back as an ExpertAnswer with ``error`` set, never raised.

        ``timeout_s`` bounds the whole call, a cold start included (the expert's own ``timeout_s``
        bounds each HTTP request)."""
        return await self._calls.call(name, request, trace, timeout_s, admission)

    def _coe_caller(self, admission: Admission | None) -> Callable[[str, Request], Awaitable[ExpertAnswer]]:
        """``_ask_for_coe`` under one request's admission (an aggregator's or a router's calls count
        against the same limits as the request's own)."""
        return self._ask_for_coe if admission is None else partial(self._ask_for_coe, admission=admission)

    async def _ask_for_coe(
        self, name: str, request: Request, admission: Admission | None = None
    ) -> ExpertAnswer:
        """``call_expert`` for CoE's own requests (an aggregator's judge or writer, a router's
        annotator): a JSON schema constrains the reply where the expert enforces one and is left out
        where it does not, since these callers parse the reply as text either way. (A caller's own
        request never gets here: routing sends it only to experts that serve what it asks.)"""
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema" and "json_schema" not in self.capabilities(name):
            request = request.model_copy(update={"response_format": None})
        return await self.call_expert(name, request, admission=admission)

    async def _route_one(
        self,
        request: Request,
        trace: Trace,
        decision: RouteDecision | None = None,
        turn: Turn | None = None,
        admission: Admission | None = None,
    ) -> RouteDecision:
        t = time.perf_counter()
        if decision is None and request.expert is not None:
            decision = self.decide([request])[0]  # pinned: nothing to compute
        if decision is not None:
            if turn is not None and self.sessions is not None:
                self.sessions.pinned(turn)
        else:
            # Built off the loop the first time: constructing a router loads the encoder (seconds).
            router = self._router or await asyncio.to_thread(lambda: self.router)
            if isinstance(router, AsyncRouter):  # it calls experts while routing (skills annotator)
                decision = (await router.aroute([request], self._coe_caller(admission)))[0]
                if turn is not None:
                    decision = await asyncio.to_thread(self._steer, turn, request, decision)
            else:
                # The encoder is CPU-bound; off the loop so a server keeps serving while it runs.
                decision = await asyncio.to_thread(self._decide_one, request, turn)
        trace.timings_ms["route"] = _ms(t)
        trace.decision = decision
        return decision

    def _decide_one(self, request: Request, turn: Turn | None) -> RouteDecision:
        decision = self.decide([request])[0]
        return self._steer(turn, request, decision) if turn is not None else decision

    def _steer(self, turn: Turn, request: Request, decision: RouteDecision) -> RouteDecision:
        assert self.sessions is not None  # a turn exists only when sessions are on
        return self.sessions.steer(turn, request, decision, set(self.config.experts))

    async def _open_session(
        self, request: Request, session: str | SessionRef | None, trace: Trace
    ) -> Turn | None:
        sessions = await self.asessions()
        if sessions is None:
            return None
        ref = SessionRef(id=session) if isinstance(session, str) else session
        turn = await sessions.open(request, ref.id if ref else None, ref.source if ref else "argument")
        trace.session = turn.trace
        return turn

    async def _close_session(
        self, turn: Turn | None, request: Request, answer: Answer, decision: RouteDecision
    ) -> None:
        if turn is not None and self.sessions is not None:
            said = Message(role="assistant", content=answer.text or None, tool_calls=answer.tool_calls)
            await self.sessions.close(turn, request, said, answer.expert, decision)

    def _finish(self, trace: Trace, decision: RouteDecision, used: str, usage: Usage, started: float) -> None:
        # A synthesised answer is "by" the aggregator expert: what counts is whether a recruited one answered.
        recruited = set(decision.recruited)
        trace.fallback_used = not any(a.ok and a.expert in recruited for a in trace.attempts)
        trace.usage = usage
        trace.active_params_b = self.config.experts[used].params_b
        trace.timings_ms["total"] = _ms(started)

    # ----------------------------------------------------------------------- sync API, lifetime

    def ask(self, prompt: Prompt | Request, *, expert: str | None = None, **options: Any) -> Answer:
        """``aask`` from sync code (the same keywords, ``session=`` included)."""
        return self.run(self.aask(prompt, expert=expert, **options))

    def batch(
        self, items: Iterable[Any], *, out: str | os.PathLike[str] | None = None, **options: Any
    ) -> BatchReport:
        """Answer many prompts, loading each expert once (see coe.batch): returns a BatchReport.

        ``items``: prompts, or dicts / ``BatchItem`` with ``id``, ``prompt`` or ``messages`` and an
        optional ``expert`` (pinned, not routed). With ``out``, each result is appended to that JSONL
        file as it finishes and a rerun skips the ids already there. ``options``: ``params``,
        ``concurrency``, ``observer``. In async code: ``await coe.batch.run_batch(coe, items, ...)``."""
        from coe.batch.runner import run_batch

        return self.run(run_batch(self, items, out=None if out is None else Path(out), **options))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine from sync code on this CoE's own event loop. The HTTP client and the expert
        leases live on that loop, so sync callers that mix ``ask`` with their own coroutines (a batch
        of ``aask`` calls, ``pool.warm()``) use this rather than ``asyncio.run``, which would give each
        its own loop."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def aclose(self) -> None:
        await self._calls.aclose()
        if self._recorder is not None:
            await asyncio.to_thread(self._recorder.close)
        if self._sessions is not None:
            await self._sessions.aclose()
        if self._cache is not None:
            await self._cache.aclose()
        self.pool.stop_all()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._calls.aclose())
            if self._sessions is not None:
                self._loop.run_until_complete(self._sessions.aclose())
            if self._cache is not None:
                self._loop.run_until_complete(self._cache.aclose())
            self._loop.close()
        if self._recorder is not None:
            self._recorder.close()
        self.pool.stop_all()

    def __enter__(self) -> CoE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CoE:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _whole(answer: Answer) -> AsyncIterator[StreamEvent]:
    yield StreamEvent(type="delta", text=answer.text)
    yield StreamEvent(type="done", answer=answer)


def _asked(request: Request, decision: RouteDecision | None) -> str:
    """What the caller asked for, as the cache's ``model`` scope: a pinned expert, a pinned
    category, or routing (the server's ``coe/expert/NAME``, ``coe/category/NAME``, ``coe``)."""
    if request.expert is not None:
        return f"expert:{request.expert}"
    if decision is not None:
        return f"decision:{decision.category}:{','.join(decision.experts)}"
    return "routed"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def make_request(
    prompt: Prompt | Request, expert: str | None, params: dict[str, Any], **options: Any
) -> Request:
    """One Request from what ``aask`` was given: a Request as is (keywords override its fields)."""
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(prompt, Request):
        update: dict[str, Any] = {**given, "params": {**prompt.params, **params}}
        if expert is not None:
            update["expert"] = expert
        return Request.model_validate({**prompt.model_dump(exclude_unset=True), **update})
    return Request.from_input(prompt, expert=expert, params=params, **given)
