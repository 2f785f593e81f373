"""The expert pool: where each expert lives, which experts are loaded, and who waits for whom. A
thin composition of the parts that do each job, held by the engine as ``coe.pool``; callers reach
the part they need (``pool.scheduler``, ``pool.supervisor``, ``pool.detached``, ``pool.budget``).

``async with pool.lease(name) as url:`` is the whole contract for the rest of CoE. A leased expert is
never stopped, put to sleep or evicted until the block exits (a whole stream included).

* ``endpoint:`` experts are external: their URL is returned as is and they are never managed.
* ``serve:`` experts are loaded on first use: cold -> starting -> ready. A vLLM expert that is evicted
  goes to sleep (ready -> stopping -> asleep, weights in host RAM) and wakes on its next use; a
  llama.cpp expert is stopped (-> cold). A process that dies on its own is marked failed and started
  again on its next use (``supervisor.crashes`` counts those; coe.experts.supervisor).
* Experts that are LoRA adapters of one base share one process (coe.experts.groups): leasing any of
  them holds it, it is started, evicted and restarted after a crash once for all of them, and its
  memory (the base plus the adapters) is counted once.
* ``coe experts up`` starts experts detached; they are adopted (reused, never evicted, counted in the
  budget) and left running (coe.experts.detached).

Memory budget (``serving.memory_budget_gb``; None = no limit, everything loads on first use). Each
expert weighs its footprint (coe.experts.footprint, coe.experts.budget). An expert that does not fit
evicts idle experts chosen by ``serving.eviction`` (coe.experts.planner): ``lru``, or ``lookahead``
(next use furthest away in the known queue: the batch runner's plan given to ``scheduler.expect()``,
and the requests waiting right now). The admission policy is coe.experts.scheduler's.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from coe.config import CoEConfig
from coe.experts.budget import MemoryBudget
from coe.experts.detached import DetachedExperts, entry_pid, healthy
from coe.experts.scheduler import Changes, Scheduler
from coe.experts.statedir import state_dir
from coe.experts.supervisor import State, Supervisor


@dataclass
class ExpertStatus:
    name: str
    kind: str
    state: State
    url: str | None = None
    pid: int | None = None
    detail: str = ""
    memory_gb: float | None = None


class PoolStats(BaseModel):
    """Counters for /metrics and benchmarks: a load is a process start or a wake from sleep."""

    loads: dict[str, int]
    evictions: dict[str, int]
    starts: dict[str, int]
    wakes: dict[str, int]
    crashes: dict[str, int]
    resident_gb: float
    budget_gb: float | None


class ExpertPool:
    def __init__(self, config: CoEConfig) -> None:
        self.config = config
        changes = Changes()
        self.budget = MemoryBudget(config)
        self.supervisor = Supervisor(config, on_change=changes.notify)
        self.groups = self.supervisor.groups  # which experts share a process
        self.detached = DetachedExperts(config, self.supervisor, self.budget)
        self.scheduler = Scheduler(config, self.supervisor, self.detached, self.budget, changes)

    @property
    def state_dir(self) -> Path:
        """Where this registry's logs, sessions, cache and traces live (coe.experts.statedir)."""
        return state_dir(self.config)

    def lease(self, name: str) -> AbstractAsyncContextManager[str]:
        """``async with pool.lease(name) as url:`` holds the expert for one call (a whole stream
        included): loaded if need be, never stopped or evicted until the block exits."""
        return self.scheduler.lease(name)

    async def url_for(self, name: str) -> str:
        """Load the expert if needed and return its URL, without holding it."""
        return await self.scheduler.url_for(name)

    def state(self, name: str) -> State:
        return self.supervisor.state(name)

    def error(self, name: str) -> str | None:
        """Why the expert last failed to start or died, if it did."""
        return self.supervisor.error(name)

    @property
    def running(self) -> dict[str, int]:
        """Our live processes (a sleeping vLLM expert's included) by expert."""
        return self.supervisor.running

    def stop_all(self) -> None:
        """Stop every process this pool started (not the detached ones of `coe experts up`)."""
        self.supervisor.stop_all()

    def stats(self) -> PoolStats:
        sup, sched = self.supervisor, self.scheduler
        return PoolStats(
            loads=dict(sched.loads), evictions=dict(sched.evictions), starts=dict(sup.starts),
            wakes=dict(sup.wakes), crashes=dict(sup.crashes),
            resident_gb=round(sched.resident_gb(), 3), budget_gb=self.budget.gb,
        )  # fmt: skip

    async def status(self) -> list[ExpertStatus]:
        """Every expert: where it is, its state and why it is down (``coe experts status``, the
        dashboard, /readyz). A crashed process is noticed here too."""
        recorded = self.detached.records()
        out = []
        state: State
        for name, expert in self.config.experts.items():
            if expert.serve is None:
                where = expert.endpoint or expert.provider
                up = expert.endpoint is not None and await healthy(expert.endpoint)
                detail = "reachable" if up else ("unreachable" if expert.endpoint else "hosted")
                out.append(ExpertStatus(name, expert.kind, "external", where, None, detail))
                continue
            self.supervisor.reap(name)
            host = self.groups.host(name)
            server, entry = self.supervisor.server(name), recorded.get(host)
            size = self.budget.known(name)
            size = expert.memory_gb if size is None else size
            shared = f"shares {host}'s process" if host != name else ""
            if server is not None and server.alive():
                state = self.state(name)
                out.append(ExpertStatus(name, "serve", state, server.url, server.pid, shared, size))
            elif entry is not None and (pid := entry_pid(entry)) is not None:
                url = str(entry["url"])
                state = "ready" if await healthy(url) else "starting"
                out.append(ExpertStatus(name, "serve", state, url, pid, "up (detached)", size))
            else:
                detail = self.error(name) or ""
                out.append(ExpertStatus(name, "serve", self.state(name), None, None, detail, size))
        return out
