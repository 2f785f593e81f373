"""The request path, written once: every entry point (``ask``, ``stream``, batch mode, each server
API) runs these stages.

    signals → session → route → cache lookup → retrieve (+ document check) → capabilities
        → call with fallback → aggregate → finish (session, cache store, trace record)

A stage is added in one place: ``Pipeline.stages``. The stages before the experts (coe.pipeline.stages)
take a list of flows, so batch mode prepares every item at once and then only schedules the calls
differently (route all first, then each expert's group; coe.batch.runner).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from coe.encoding.embedder import request_scope
from coe.experts.calls import ExpertCalls
from coe.pipeline.answering import Answering
from coe.pipeline.flow import Flow
from coe.pipeline.parts import Parts
from coe.pipeline.stages import CacheLookup, Capable, Finish, Retrieve, Route, Session, Signals, Stage
from coe.types import Answer, StreamEvent


class Pipeline:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.calls = ExpertCalls(parts.config, parts.pool, parts.capabilities)
        self.answering = Answering(parts.config, parts, self.calls)
        self.stages: tuple[Stage, ...] = (
            Signals(parts),
            Session(parts),
            Route(parts, self.answering.for_coe),
            CacheLookup(parts),
            Retrieve(parts),
            Capable(parts),
        )
        self.finishing = Finish(parts)

    async def prepare(self, flows: Sequence[Flow]) -> None:
        """Every stage before the experts, for all flows together. One embedding scope: the router,
        the session, the cache and the retrieval gate embed each prompt once."""
        with request_scope():
            for stage in self.stages:
                await stage.run(flows)

    async def _ready(self, flow: Flow) -> None:
        await self.prepare([flow])
        if flow.failure is not None:
            raise flow.failure

    async def answer(self, flow: Flow) -> Answer:
        await self._ready(flow)
        if flow.cached is not None:
            answer = self.answering.from_cache(flow)
        else:
            answer = await self.answering.combine(flow, await self.answering.answers(flow))
        await self.finish(flow, answer)
        return answer

    async def stream(self, flow: Flow) -> AsyncIterator[StreamEvent]:
        """Deltas, then one ``done`` event with the whole answer. The trace holds the decision and the
        session before the first event (the server's headers)."""
        await self._ready(flow)
        if flow.cached is not None:  # a cached answer streams too: deltas, then done
            from coe.signals.cache.runtime import cached_events

            events: AsyncIterator[StreamEvent] = _iterate(
                cached_events(self.answering.from_cache(flow), flow.trace)
            )
        else:
            events = self.answering.stream(flow)
        async for event in events:
            if event.type == "done" and event.answer is not None:
                await self.finish(flow, event.answer)
            yield event

    async def finish(self, flow: Flow, answer: Answer) -> None:
        await self.finishing.run(flow, answer)


async def _iterate(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event
