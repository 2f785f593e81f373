"""The stages before any expert is called, in the order the pipeline runs them: signals, session,
route, cache lookup, retrieval (with the guard's document check), capability filter.

Each stage is a small class with one method, ``run(flows)``, that fills in its part of each live flow
(``Flow.live``: not refused, not answered from the cache). A stage takes the whole list so that the
encoder-bound ones (routing, retrieval) make one call for a batch; the others go flow by flow. A
refusal (``CoEError``) is kept on that flow as ``failure``: one blocked request never fails its
batch-mates, and a single request re-raises it (``Pipeline.prepare``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeGuard

from coe.capabilities import restrict
from coe.clock import ms_since
from coe.config import CoEConfig
from coe.errors import CoEError, ExpertError
from coe.experts.calls import Slot
from coe.pipeline.batching import MicroBatcher
from coe.pipeline.flow import Flow
from coe.pipeline.parts import Parts
from coe.protocols import AsyncRouter, CallExpert, MayAskExperts, Router
from coe.types import Answer, Message, Request, RouteDecision


class Stage(Protocol):
    name: str

    async def run(self, flows: Sequence[Flow]) -> None: ...


async def each(flows: Sequence[Flow], step: Callable[[Flow], Awaitable[None]]) -> None:
    """``step`` on every live flow in turn; a refusal stays on its flow."""
    for flow in flows:
        if flow.live:
            try:
                await step(flow)
            except CoEError as exc:
                flow.failure = exc


def share_ms(started: float, n: int) -> float:
    """A batched step's time, shared by the requests it served (all of it for one request)."""
    return round(ms_since(started) / max(1, n), 3)


class Signals:
    """The guard and PII checks, before anything else: verdicts go in the trace; ``block`` refuses
    the request (no expert is called), ``route`` replaces the decision, ``redact`` the request."""

    name = "signals"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flows: Sequence[Flow]) -> None:
        await each(flows, self._one)
        for flow in flows:
            flow.original = flow.request  # redacted, not yet with documents: what the trace store keeps

    async def _one(self, flow: Flow) -> None:
        stage = self.parts.signals
        if stage is None:
            return
        t = time.perf_counter()
        flow.request, signals = await asyncio.to_thread(stage.run, flow.request)
        flow.trace.signals = signals
        flow.trace.timings_ms["signals"] = ms_since(t)
        if signals.blocked_by is not None:
            raise stage.blocked(signals)
        if signals.routed_to is not None:
            fired = next(v for v in signals.verdicts if v.action == "route")
            flow.decision = RouteDecision(
                router="signals",
                experts=[signals.routed_to],
                reason=f"signal {fired.signal} found {fired.verdict}: action route to {signals.routed_to}",
            )


class Session:
    """Which conversation the request continues (by the id given, else by its history)."""

    name = "session"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flows: Sequence[Flow]) -> None:
        if await self.parts.asessions() is not None:
            await each(flows, self._one)

    async def _one(self, flow: Flow) -> None:
        sessions = self.parts.sessions
        assert sessions is not None
        ref = flow.session
        flow.turn = await sessions.open(
            flow.request, ref.id if ref else None, ref.source if ref else "argument"
        )
        flow.trace.session = flow.turn.trace


class Route:
    """The decision: the caller's or a signal's when there is one, a pinned expert's, else the
    router's, in one router call for every flow that needs one; then the session may keep the expert
    it had (``Sessions.steer``)."""

    name = "route"

    def __init__(self, parts: Parts, for_coe: Callable[[Slot | None], CallExpert]) -> None:
        self.parts = parts
        self.for_coe = for_coe  # for routers that ask experts while routing (skills annotator)
        self._micro: MicroBatcher[Flow] | None = None  # for Parts' one router, made on first use

    async def run(self, flows: Sequence[Flow]) -> None:
        t = time.perf_counter()
        await each(flows, self._given)
        todo = [f for f in flows if f.live and f.decision is None]
        if todo:
            router = await self.parts.arouter()
            if _asks_experts(router):
                slot = todo[0].slot if len(todo) == 1 else None
                decisions = await router.aroute([f.request for f in todo], self.for_coe(slot))
                if any(f.turn is not None for f in todo):
                    await asyncio.to_thread(self._steer, todo, decisions)
                else:
                    self._steer(todo, decisions)
            else:  # CPU-bound (the encoder): off the loop, micro-batched with concurrent requests
                await self._batcher(router).submit(todo)
        share = share_ms(t, len(flows))
        for flow in flows:
            if flow.decision is not None:
                flow.trace.timings_ms["route"] = share
                flow.trace.decision = flow.decision

    def _batcher(self, router: Router) -> MicroBatcher[Flow]:
        if self._micro is None:

            def work(flows: list[Flow]) -> None:
                self._steer(flows, router.route([f.request for f in flows]))

            self._micro = MicroBatcher(work)
        return self._micro

    async def _given(self, flow: Flow) -> None:
        """A decision the router does not make: the caller's, a signal's, or a pinned expert's."""
        if flow.decision is None and flow.request.expert is not None:
            flow.decision = pinned(self.parts.config, flow.request.expert)
        if flow.decision is not None and flow.turn is not None and (sessions := self.parts.sessions):
            sessions.pinned(flow.turn)

    def _steer(self, flows: Sequence[Flow], decisions: Sequence[RouteDecision]) -> None:
        """The router's decisions, each kept or changed by its session (it may embed the turn)."""
        sessions, experts = self.parts.sessions, set(self.parts.config.experts)
        for flow, decision in zip(flows, decisions, strict=True):
            flow.decision = decision
            if sessions is not None and flow.turn is not None:
                flow.decision = sessions.steer(flow.turn, flow.request, decision, experts)


def _asks_experts(router: Router) -> TypeGuard[AsyncRouter]:
    """Whether routing goes through ``aroute`` (it may call experts) rather than batched ``route``."""
    if not isinstance(router, AsyncRouter):
        return False
    return router.asks_experts if isinstance(router, MayAskExperts) else True


def pinned(config: CoEConfig, expert: str) -> RouteDecision:
    """The decision for a request that names its expert: no router, nothing to compute."""
    if expert not in config.experts:
        raise ExpertError(expert, f"no such expert; known: {', '.join(sorted(config.experts))}")
    return RouteDecision(router="pinned", experts=[expert], reason="expert pinned by the caller")


class CacheLookup:
    """After routing (the router's vector of the prompt is there to reuse): a hit answers the
    request; a store failure is a miss with a note (``trace.cache.status == "error"``)."""

    name = "cache"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flows: Sequence[Flow]) -> None:
        if self.parts.cache is not None:
            await each(flows, self._one)

    async def _one(self, flow: Flow) -> None:
        from coe.signals.cache.runtime import router_embedding

        cache = self.parts.cache
        assert cache is not None
        decision, known = flow.routed(), self.parts.config.experts
        expert = decision.experts[0] if decision.experts else None
        temperature = known[expert].params.temperature if expert is not None and expert in known else None
        router = self.parts.built_router
        embedding = router_embedding(router, flow.request) if router is not None else None
        flow.trace.cache, flow.cached, flow.pending = await cache.lookup(
            flow.request, flow.asked, embedding, temperature
        )
        flow.trace.timings_ms["cache"] = flow.trace.cache.lookup_ms


class Retrieve:
    """The gate decides, kept documents go into the prompt, and the guard reads them before any
    expert does. A failed retrieval never refuses: the request goes on without documents."""

    name = "retrieve"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flows: Sequence[Flow]) -> None:
        retriever = self.parts.retriever
        todo = [f for f in flows if f.live]
        if retriever is None or not todo:
            return
        t = time.perf_counter()
        done = await asyncio.to_thread(
            retriever.run_many, [f.request for f in todo], [f.decision for f in todo]
        )
        share = share_ms(t, len(todo))
        before = {id(f): f.request for f in todo}
        for flow, (request, trace) in zip(todo, done, strict=True):
            flow.request, flow.trace.retrieval = request, trace
            flow.trace.timings_ms["retrieve"] = share
        await each(todo, lambda flow: self._check(flow, before[id(flow)]))

    async def _check(self, flow: Flow, before: Request) -> None:
        stage, signals = self.parts.signals, flow.trace.signals
        if stage is None or signals is None or flow.request is before:
            return
        await asyncio.to_thread(stage.check_documents, before, flow.request, signals)
        if signals.blocked_by is not None:
            raise stage.blocked(signals)


class Capable:
    """Only experts that can serve the request stay candidates (coe/capabilities/restrict.py); the
    exclusions go in the trace."""

    name = "capabilities"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flows: Sequence[Flow]) -> None:
        await each(flows, self._one)

    async def _one(self, flow: Flow) -> None:
        parts = self.parts
        flow.decision, flow.trace.capabilities = restrict(
            flow.routed(), flow.request, parts.config, parts.pool.supervisor.detected
        )
        flow.trace.decision = flow.decision


class Finish:
    """After the answer: the session remembers who answered, the cache stores the answer, the trace
    store records it (``CoE(traces=True)``). Never raises for a store failure: the answer stands."""

    name = "finish"

    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def run(self, flow: Flow, answer: Answer) -> None:
        sessions = self.parts.sessions
        if flow.turn is not None and sessions is not None:
            said = Message(role="assistant", content=answer.text or None, tool_calls=answer.tool_calls)
            await sessions.close(flow.turn, flow.request, said, answer.expert, flow.routed())
        if flow.pending is not None and (cache := self.parts.cache) is not None:
            error = await cache.put(flow.pending, answer)
            if error is not None and flow.trace.cache is not None:
                flow.trace.cache.error = error
                flow.trace.cache.reason += "; the answer could not be stored"
        if (recorder := self.parts.recorder) is not None:
            from coe.traces import new_id

            answer.trace.id = new_id()
            recorder.record(answer.trace.id, flow.original or flow.request, answer, api="library")
