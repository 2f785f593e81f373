"""The batch runner: route everything first, then load each expert once and drain its group.

Why: loading an expert costs seconds (a llama.cpp start) to a second (a vLLM wake), a generation
far less. Answering a queue in arrival order under a memory budget that holds one expert swaps on
almost every item; grouping by expert swaps once per expert (Symbolic-MoE's batch strategy).

1. Items already in OUT.jsonl are skipped (resume); the rest go through the pipeline's stages before the
   experts all at once (coe.pipeline: signals, routing in one batched router call, cache, retrieval).
2. Each item becomes one unit per recruited expert; units are grouped by expert. Groups run in the
   order of ``planner.order_groups`` (loaded experts first), as many at once as the memory budget
   holds, each at its expert's concurrency (llama.cpp ``parallel`` slots, vLLM ``max_num_seqs``).
   The pool gets the plan through ``expect()``, so ``lookahead`` eviction knows what comes next.
3. A result is written (one line, flushed) as soon as its item is done. Items whose recruited
   experts all failed go to their next candidate, like ``CoE.aask``; items recruiting several
   experts are aggregated after all groups ran, so an aggregator's own calls do not cause swaps.
4. Faults: an error or timeout fails that item only. A process that crashes is restarted once (the
   item it was answering runs again); a second crash, or a start that fails, fails the expert's
   remaining items with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from coe.batch.files import BatchInputError, BatchItem, BatchResult, ResultLog, as_item
from coe.errors import AllExpertsFailed, CoEError
from coe.experts.planner import order_groups
from coe.pipeline import Flow, Pipeline, next_candidate
from coe.types import ExpertAnswer

__all__ = ["BatchInputError", "BatchItem", "BatchObserver", "BatchReport", "BatchResult", "run_batch"]


class HasPipeline(Protocol):
    """What ``run_batch`` takes besides a Pipeline: an object that has one (a ``CoE``)."""

    @property
    def pipeline(self) -> Pipeline: ...


class BatchObserver(Protocol):
    """Progress hooks (the CLI's progress bar): the plan once, then each result as it is written."""

    def planned(self, groups: Mapping[str, int], resumed: int) -> None: ...

    def finished(self, result: BatchResult, group: str) -> None: ...


class BatchReport(BaseModel):
    """What a run did. ``results`` are in input order, those of an earlier run (resumed) included."""

    results: list[BatchResult]
    resumed: int = Field(0, description="results found in OUT.jsonl from an earlier run")
    problems: list[str] = Field(default_factory=list, description="input lines skipped, and why")
    groups: dict[str, int] = Field(default_factory=dict, description="items per expert, in run order")
    loads: dict[str, int] = Field(default_factory=dict, description="expert loads during this run")
    evictions: dict[str, int] = Field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[BatchResult]:
        return [r for r in self.results if not r.ok]

    def by_id(self) -> dict[str, BatchResult]:
        return {str(r.id): r for r in self.results}


@dataclass
class _Job:
    item: BatchItem
    flow: Flow
    begun: bool = False
    open_units: int = 0
    answers: list[ExpertAnswer] = field(default_factory=list)

    @property
    def group(self) -> str:
        return self.flow.routed().expert


async def run_batch(
    source: Pipeline | HasPipeline,
    items: Iterable[BatchItem | dict[str, Any] | str],
    *,
    out: str | Path | None = None,
    params: dict[str, Any] | None = None,
    concurrency: int | None = None,
    observer: BatchObserver | None = None,
    max_restarts: int = 1,
) -> BatchReport:
    """Answer every item; with ``out``, append each result to that JSONL file and skip ids already
    in it. ``concurrency`` overrides the per-expert concurrency; ``params`` are generation defaults."""
    pipeline = source if isinstance(source, Pipeline) else source.pipeline
    runner = _Runner(pipeline, params or {}, concurrency, observer, max_restarts)
    return await runner.run([as_item(v, i) for i, v in enumerate(items)], Path(out) if out else None)


class _Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        params: dict[str, Any],
        concurrency: int | None,
        observer: BatchObserver | None,
        max_restarts: int,
    ) -> None:
        self.pipeline = pipeline
        self.config = pipeline.parts.config
        self.pool = pipeline.parts.pool
        self.params = params
        self.concurrency = concurrency
        self.observer = observer
        self.max_restarts = max_restarts
        self.queues: dict[str, deque[_Job]] = {}
        self.order: list[str] = []
        self.results: dict[str, BatchResult] = {}
        self.deferred: list[_Job] = []
        self.failed_experts: dict[str, str] = {}
        self.crash_base: dict[str, int] = dict(pipeline.parts.pool.supervisor.crashes)
        self.log: ResultLog | None = None

    async def run(self, items: list[BatchItem], out: Path | None) -> BatchReport:
        started = time.perf_counter()
        loads, evictions = dict(self.pool.scheduler.loads), dict(self.pool.scheduler.evictions)
        self.log = ResultLog(out) if out else None
        try:
            resumed = dict(self.log.done) if self.log else {}
            n_resumed = sum(1 for i in items if i.key in resumed)
            known = await self._route([i for i in items if i.key not in resumed])
            groups = {name: len(self.queues[name]) for name in self.order}
            for result in known:
                if result.expert is not None:  # refused with a pinned expert, or answered from the cache
                    groups[result.expert] = groups.get(result.expert, 0) + 1
            if self.observer:
                self.observer.planned(groups, n_resumed)
            for result in known:
                self._write(result, str(result.expert))
            with self.pool.supervisor.restart_limit(self.max_restarts):
                await self._run_groups()
            await asyncio.gather(*(self._finish(job) for job in self.deferred))
        finally:
            if self.log:
                self.log.close()
        self.results.update({k: r for k, r in resumed.items() if k not in self.results})
        pool = self.pool
        return BatchReport(
            results=[self.results[i.key] for i in items if i.key in self.results],
            resumed=n_resumed,
            problems=self.log.problems if self.log else [],
            groups=groups,
            loads=_grown(loads, pool.scheduler.loads),
            evictions=_grown(evictions, pool.scheduler.evictions),
            wall_s=round(time.perf_counter() - started, 3),
        )

    # ----------------------------------------------------------------------------------- routing

    async def _route(self, items: list[BatchItem]) -> list[BatchResult]:
        """Every item through the pipeline's stages before the experts at once (one router call, one
        retrieval pass), then the groups. Returns the results already known: items a stage refused
        (a signal's block, an unknown pinned expert) and items answered from the cache."""
        flows = [Flow(item.request(self.params)) for item in items]
        await self.pipeline.prepare(flows)
        known: list[BatchResult] = []
        for item, flow in zip(items, flows, strict=True):
            if flow.failure is not None:
                known.append(
                    BatchResult(
                        id=item.id,
                        expert=item.expert,
                        meta=item.meta,
                        error=str(flow.failure),
                        trace=flow.trace,
                    )
                )
            elif flow.cached is not None:
                answer = self.pipeline.answering.from_cache(flow)
                await self.pipeline.finish(flow, answer)
                known.append(
                    BatchResult(
                        id=item.id, expert=answer.expert, answer=answer.text, trace=flow.trace, meta=item.meta
                    )
                )
            else:
                job = _Job(item, flow)
                for name in flow.routed().recruited:
                    self._enqueue(name, job)
        loaded = [n for n in self.queues if self.pool.scheduler.is_loaded(n)]
        self.order = order_groups({n: len(q) for n, q in self.queues.items()}, loaded)
        return known

    def _enqueue(self, name: str, job: _Job) -> None:
        job.open_units += 1
        self.queues.setdefault(name, deque()).append(job)
        if name not in self.order:
            self.order.append(name)

    # ------------------------------------------------------------------------------------ groups

    async def _run_groups(self) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        while True:
            for name in self._launchable(running):
                running[name] = asyncio.create_task(self._drain(name))
            self.pool.scheduler.expect([n for n in self.order if self.queues.get(n) and n not in running])
            if not running:
                return
            done, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
            for name in [n for n, task in running.items() if task in done]:
                running.pop(name).result()

    def _launchable(self, running: Mapping[str, object]) -> list[str]:
        """Next groups in plan order, as many as fit in the memory budget beside the running ones."""
        chosen: list[str] = []
        for name in self.order:
            if not self.queues.get(name) or name in running:
                continue
            try:
                fits = self.pool.budget.fits([*running, *chosen, name]) if self._managed(name) else True
            except CoEError as exc:  # its footprint cannot be known: its items fail, the batch goes on
                self.failed_experts.setdefault(name, str(exc))
                fits = True
            if fits or not (running or chosen):
                chosen.append(name)
        return chosen

    def _managed(self, name: str) -> bool:
        return self.config.experts[name].serve is not None

    async def _drain(self, name: str) -> None:
        queue = self.queues[name]
        width = self.concurrency or self.config.experts[name].slots

        async def worker() -> None:
            while queue:
                await self._unit(name, queue.popleft())

        await asyncio.gather(*(worker() for _ in range(max(1, min(width, len(queue))))))

    async def _unit(self, name: str, job: _Job) -> None:
        if not job.begun:  # the trace's total counts from the first call, not from the wait in line
            job.begun, job.flow.started = True, time.perf_counter()
        crashes = self._crashes(name)  # a crash noticed here is not restarted past max_restarts
        if name in self.failed_experts:
            answer = ExpertAnswer(expert=name, error=self.failed_experts[name])
        else:
            answer = await self.pipeline.calls.call(name, job.flow.request, job.flow.trace)
            if not answer.ok and self._retry_after_crash(name, crashes, answer):
                self.queues[name].appendleft(job)  # the restarted process answers it
                return
        job.answers.append(answer)
        job.open_units -= 1
        if job.open_units:
            return
        if (following := next_candidate(job.flow.routed(), job.answers)) is not None:
            self._enqueue(following, job)
        elif job.flow.routed().fanout > 1 and any(a.ok for a in job.answers):
            self.deferred.append(job)
        else:
            await self._finish(job)

    def _crashes(self, name: str) -> int:
        """Crashes of the expert's process during this batch; past ``max_restarts`` it is failed."""
        pool = self.pool
        pool.supervisor.reap(name)
        total = pool.supervisor.crashes.get(name, 0) - self.crash_base.get(name, 0)
        if total > self.max_restarts and name not in self.failed_experts:
            restarts = f"restarted {self.max_restarts} time{'s' * (self.max_restarts != 1)}"
            last = (pool.error(name) or "").split("\n")[0]  # the exit code and where its log is
            self.failed_experts[name] = f"its process crashed {total} times ({restarts}); {last}"
        return total

    def _retry_after_crash(self, name: str, crashes_before: int, answer: ExpertAnswer) -> bool:
        """True: the process died under this call and may be restarted, so run it again. A crash past
        ``max_restarts``, or a start that failed, fails the expert's remaining items with the reason."""
        crashes = self._crashes(name)
        if crashes > crashes_before and name not in self.failed_experts:
            return True
        if name not in self.failed_experts and self.pool.state(name) == "failed":
            self.failed_experts[name] = answer.error or self.pool.error(name) or "failed to start"
        if name in self.failed_experts:
            answer.error = self.failed_experts[name]
        return False

    # ----------------------------------------------------------------------------------- results

    async def _finish(self, job: _Job) -> None:
        item, flow = job.item, job.flow
        if any(a.ok for a in job.answers):
            try:
                answer = await self.pipeline.answering.combine(flow, job.answers)
                await self.pipeline.finish(flow, answer)
            except CoEError as exc:
                result = BatchResult(id=item.id, expert=job.group, error=str(exc), trace=flow.trace)
            else:
                result = BatchResult(id=item.id, expert=answer.expert, answer=answer.text, trace=flow.trace)
        else:
            errors = {a.expert: a.error or "unknown error" for a in job.answers}
            result = BatchResult(
                id=item.id, expert=job.group, error=str(AllExpertsFailed(errors)), trace=flow.trace
            )
        result.meta = item.meta
        self._write(result, job.group)

    def _write(self, result: BatchResult, group: str) -> None:
        self.results[str(result.id)] = result
        if self.log is not None:
            self.log.append(result)
        if self.observer is not None:
            self.observer.finished(result, group)


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What each counter gained during the batch (counters that did not move are left out)."""
    return {n: c - before.get(n, 0) for n, c in after.items() if c > before.get(n, 0)}
