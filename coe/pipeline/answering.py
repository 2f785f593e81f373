"""Calling the chosen experts, falling back in order, and aggregating: whole or streamed.

The fallback rule is one pure function, ``next_candidate``, shared with batch mode (which only
schedules the same calls differently). A streamed answer is the same walk with a streaming last step:
one expert streams its deltas, or several answer whole and the aggregator's answer streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from coe.capabilities import forced as forced_calls
from coe.clock import ms_since
from coe.config import CoEConfig
from coe.errors import AllExpertsFailed, BadReply, ExpertError
from coe.experts.calls import ExpertCalls, Slot
from coe.pipeline.flow import Flow
from coe.pipeline.parts import Parts
from coe.protocols import CallExpert, Context, StreamingAggregator
from coe.replies import StreamedReply
from coe.types import Answer, Attempt, ExpertAnswer, Request, RouteDecision, StreamEvent, Trace, Usage


def next_candidate(decision: RouteDecision, answers: Sequence[ExpertAnswer]) -> str | None:
    """The expert to try next: none once any answer succeeded, else the first candidate after the
    recruited ones that has not been tried (the runner-up category's expert, then the fallback)."""
    if any(a.ok for a in answers):
        return None
    tried = {a.expert for a in answers}
    return next((n for n in decision.experts[decision.fanout :] if n not in tried), None)


class Answering:
    def __init__(self, config: CoEConfig, parts: Parts, calls: ExpertCalls) -> None:
        self.config = config
        self.parts = parts
        self.calls = calls

    # ------------------------------------------------------------------------------------ whole

    async def answers(self, flow: Flow) -> list[ExpertAnswer]:
        """The recruited experts answer concurrently, each within its timeout; only if none of them
        could answer are the remaining candidates tried, one at a time, in order. Failed answers stay
        in the list (``error`` set) so the aggregator and the trace can say who did not answer."""
        decision, request, trace = flow.routed(), flow.request, flow.trace
        recruited = decision.recruited
        timeout = self.config.aggregator.timeout_s if len(recruited) > 1 else None
        calls = (self.calls.call(n, request, trace, timeout, flow.slot) for n in recruited)
        answers = list(await asyncio.gather(*calls))
        while (name := next_candidate(decision, answers)) is not None:
            answers.append(await self.calls.call(name, request, trace, None, flow.slot))
        if not any(a.ok for a in answers):
            bad = frozenset(a.expert for a in answers if a.bad_reply)
            raise AllExpertsFailed({a.expert: a.error or "unknown error" for a in answers}, bad)
        return answers

    async def combine(self, flow: Flow, answers: list[ExpertAnswer]) -> Answer:
        """The aggregator merges the answers; the trace gets its time and the totals."""
        ctx = Context(decision=flow.routed(), trace=flow.trace, call_expert=self.for_coe(flow.slot))
        t = time.perf_counter()
        result = await self.parts.aggregator.combine(flow.request, answers, ctx)
        flow.trace.timings_ms["aggregate"] = ms_since(t)
        self.settle(flow, result.expert, result.usage)
        return result

    def from_cache(self, flow: Flow) -> Answer:
        """A cached answer: no expert was called, so no attempts, no fallback."""
        answer = flow.cached
        assert answer is not None
        flow.trace.usage = answer.usage
        flow.trace.fallback_used = False
        flow.trace.timings_ms["total"] = ms_since(flow.started)
        answer.trace = flow.trace
        return answer

    def settle(self, flow: Flow, used: str, usage: Usage) -> None:
        """The totals of an answered request. A synthesised answer is "by" the aggregator's expert:
        what ``fallback_used`` says is whether a recruited expert answered."""
        trace, recruited = flow.trace, set(flow.routed().recruited)
        trace.fallback_used = not any(a.ok and a.expert in recruited for a in trace.attempts)
        trace.usage = usage
        trace.active_params_b = self.config.experts[used].params_b
        trace.timings_ms["total"] = ms_since(flow.started)

    def for_coe(self, slot: Slot | None) -> CallExpert:
        """Calls CoE makes for itself (an aggregator's judge or writer, a router's annotator): a JSON
        schema constrains the reply where the expert enforces one and is left out where it does not,
        since these callers parse the reply as text either way."""

        async def call(name: str, request: Request) -> ExpertAnswer:
            fmt = request.response_format
            if (
                fmt is not None
                and fmt.type == "json_schema"
                and "json_schema" not in self.parts.capabilities(name)
            ):
                request = request.model_copy(update={"response_format": None})
            return await self.calls.call(name, request, None, None, slot)

        return call

    # --------------------------------------------------------------------------------- streamed

    def stream(self, flow: Flow) -> AsyncIterator[StreamEvent]:
        return self._stream_many(flow) if flow.routed().fanout > 1 else self._stream_one(flow)

    async def _stream_one(self, flow: Flow) -> AsyncIterator[StreamEvent]:
        """One answering expert: candidates in order until one streams its first delta. After that a
        failure raises ExpertError: the caller holds part of the answer, which another model must
        not continue."""
        errors: dict[str, str] = {}
        bad: set[str] = set()
        request, trace = flow.request, flow.trace
        for name in flow.routed().experts:
            t = time.perf_counter()
            forced = forced_calls.CallStream(name, request) if self.calls.enforces(name, request) else None
            reply = StreamedReply(name, request, forced)
            try:
                async with self.calls.in_slot(name, flow.slot):
                    async for chunk in self.calls.stream(name, request, trace):
                        for event in reply.take(chunk):
                            yield event
                    for event in reply.close():
                        yield event
            except ExpertError as exc:
                trace.attempts.append(
                    Attempt(expert=name, ok=False, error=exc.reason, latency_ms=ms_since(t))
                )
                if reply.started:
                    raise
                errors[name] = exc.reason
                if isinstance(exc, BadReply):
                    bad.add(name)
                continue
            if reply.forced is not None and trace.capabilities is not None:
                trace.capabilities.enforced_tool_choice = True
            trace.attempts.append(Attempt(expert=name, ok=True, latency_ms=ms_since(t)))
            trace.timings_ms[f"expert:{name}"] = ms_since(t)
            self.settle(flow, name, reply.usage)
            yield StreamEvent(type="done", answer=reply.answer(trace))
            return
        raise AllExpertsFailed(errors, frozenset(bad))

    async def _stream_many(self, flow: Flow) -> AsyncIterator[StreamEvent]:
        """Several experts: their answers are collected whole, then the aggregator's answer streams
        (token by token when it can, e.g. an LLM synthesis; otherwise as one delta)."""
        answers = await self.answers(flow)
        ctx = Context(
            decision=flow.routed(),
            trace=flow.trace,
            call_expert=self.for_coe(flow.slot),
            stream_expert=lambda name, request: self._stream_pinned(name, request, flow.slot),
        )
        t = time.perf_counter()
        aggregator = self.parts.aggregator
        if isinstance(aggregator, StreamingAggregator):
            events = aggregator.stream(flow.request, answers, ctx)
        else:
            events = whole(await aggregator.combine(flow.request, answers, ctx))
        async for event in events:
            if event.type == "done" and event.answer is not None:
                flow.trace.timings_ms["aggregate"] = ms_since(t)
                self.settle(flow, event.answer.expert, event.answer.usage)
            yield event

    def _stream_pinned(self, name: str, request: Request, slot: Slot | None) -> AsyncIterator[StreamEvent]:
        """One expert's answer, streamed, for an aggregator's synthesis. No routing, no retrieval:
        the request it gets was routed already and holds any documents."""
        decision = RouteDecision(router="pinned", experts=[name], reason="called by the aggregator")
        inner = Flow(request, Trace(decision=decision), decision=decision, slot=slot)
        return self._stream_one(inner)


async def whole(answer: Answer) -> AsyncIterator[StreamEvent]:
    """A whole answer as a stream: one delta, then done."""
    yield StreamEvent(type="delta", text=answer.text)
    yield StreamEvent(type="done", answer=answer)
