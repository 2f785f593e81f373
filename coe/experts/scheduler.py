"""Leases and admission under the memory budget: who gets an expert now, who waits, which expert
loads next and which idle ones are evicted for it (the choices themselves are coe.experts.planner's
pure functions). How a process is started or stopped is the supervisor's business.

Admission policy, so that concurrent online requests do not thrash:

1. A request for a loaded expert is served at once, even while requests for other experts wait:
   requests for what is loaded go before a swap.
2. Only idle experts (no lease) are evicted, and only once idle for ``admission_window_s``: a burst
   of requests for the loaded expert that arrives a moment apart is served together.
3. When memory must be freed, the expert with the most waiting requests loads first (one load
   serves them all); requests for the same expert share one start.
4. No starvation: once a request has waited ``max_wait_s``, its expert goes first, and the busy
   experts it needs memory from are drained (they take no new leases, finish what they hold, and
   are evicted).

Experts that share a process (coe.experts.groups) are one lease holder: leasing any of them holds
the process, and everything here is kept by process (its group's name). The counters ``loads`` and
``evictions`` are by expert: a shared process's start counts for each of its experts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from coe.config import CoEConfig
from coe.errors import ExpertError
from coe.experts.budget import SLACK_GB, MemoryBudget
from coe.experts.detached import DetachedExperts
from coe.experts.planner import choose_load, rank_victims
from coe.experts.supervisor import RESIDENT, Supervisor, expert_with_url


class Changes:
    """A wake-up for requests waiting on the pool: a lease ended, a load finished, a process died."""

    def __init__(self) -> None:
        self._changed: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def notify(self) -> None:
        if self._changed is not None:
            self._changed[1].set()
            self._changed = None

    async def wait(self, poll_s: float) -> None:
        """Wait for the next change, or ``poll_s`` at most (for the rules that depend on time)."""
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed[0] is not loop:
            self._changed = (loop, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed[1].wait(), poll_s)


class Scheduler:
    def __init__(
        self,
        config: CoEConfig,
        supervisor: Supervisor,
        detached: DetachedExperts,
        budget: MemoryBudget,
        changes: Changes,
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.detached = detached
        self.budget = budget
        self.changes = changes
        self.groups = supervisor.groups
        self.loads: dict[str, int] = {}  # starts + wakes: the swap counter
        self.evictions: dict[str, int] = {}  # stopped or put to sleep to make room
        self.in_use: dict[str, int] = {}  # open leases per expert; a leased expert is never evicted
        self._waiting: dict[str, list[float]] = {}  # arrival times of requests waiting for a load
        self._last_used: dict[str, float] = {}
        self._upcoming: list[str] = []
        # expert taking no new leases -> the starved expert it makes room for
        self._draining: dict[str, str] = {}
        self._loading: dict[str, asyncio.Task[str]] = {}

    # ----------------------------------------------------------------------------- the contract

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[str]:
        """Hold an expert for one call (a whole stream included): start or wake it, and keep it from
        being stopped or evicted until the block exits. Yields its OpenAI base URL."""
        host = self.groups.host(name)
        url = await self._acquire(host)
        try:
            yield url
        finally:
            self._release(host)

    async def url_for(self, name: str) -> str:
        """Load the expert if needed and return its URL, without holding it."""
        async with self.lease(name) as url:
            return url

    async def warm(self, names: Sequence[str] | None = None) -> list[str]:
        """Load managed experts ahead of use, in order, as many as the budget holds together (all of
        them without a budget); evicts nothing. Returns those loaded; the supervisor's ``error()`` says
        why the others failed."""
        loaded: list[str] = []
        managed = names or [n for n, e in self.config.experts.items() if e.serve is not None]
        for name in self.groups.hosts(managed):
            try:
                if self.budget.fits([*loaded, name]):
                    await self.url_for(name)
                    loaded.append(name)
            except ExpertError as exc:
                self.supervisor.note_error(name, exc.reason)
        return loaded

    def expect(self, names: Sequence[str]) -> None:
        """The known queue of upcoming uses, nearest first (a batch plan); ``lookahead`` reads it."""
        self._upcoming = [self.groups.host(n) for n in names]
        self.changes.notify()

    def is_loaded(self, name: str) -> bool:
        host = self.groups.host(name)
        return host in self.detached.adopted or self.supervisor.state(host) == "ready"

    def _count(self, counter: dict[str, int], host: str) -> None:
        for member in self.groups.members(host):
            counter[member] = counter.get(member, 0) + 1

    def resident_gb(self) -> float:
        """Memory held by loaded experts, and by those starting or stopping."""
        return self.budget.held_gb([*self.supervisor.in_state(*RESIDENT), *self.detached.adopted])

    # ------------------------------------------------------------------------- acquire / release

    async def _acquire(self, name: str) -> str:
        expert = expert_with_url(self.config, name)
        if expert.serve is None:
            return expert.endpoint  # type: ignore[return-value]
        if self.budget.gb is not None and self.budget.known(name) is None:
            await asyncio.to_thread(self.budget.footprint, name)
        arrived = time.monotonic()
        waiting = self._waiting.setdefault(name, [])
        waiting.append(arrived)
        try:
            while True:
                if (url := self._try_lease(name)) is not None:
                    return url
                if (task := self._loading.get(name)) is not None:
                    await asyncio.shield(task)  # a failed load fails every request waiting for it
                elif self.supervisor.state(name) in ("ready", "stopping") or not self._plan_load(name):
                    await self._wait_change()  # drained or being evicted, or memory is busy
        finally:
            waiting.remove(arrived)
            if not waiting:
                self._draining = {k: v for k, v in self._draining.items() if v != name}
                self.changes.notify()

    def _try_lease(self, name: str) -> str | None:
        url = self.detached.adopted.get(name)
        if url is None:
            self.supervisor.reap(name)
            server = self.supervisor.server(name)
            if server is None or self.supervisor.state(name) != "ready" or name in self._draining:
                return None
            url = server.url
        self.in_use[name] = self.in_use.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        return url

    def _release(self, name: str) -> None:
        if name in self.in_use:
            self.in_use[name] -= 1
            self._last_used[name] = time.monotonic()
            self.changes.notify()

    def _plan_load(self, name: str) -> bool:
        """Start loading ``name`` (after evicting what must go) if it may load now; False: wait."""
        self.supervisor.refuse_past_limit(name)
        victims: list[str] = []
        if self.budget.gb is not None:
            if (why := self.budget.never_fits(name)) is not None:
                raise ExpertError(name, why)
            need = self.budget.footprint(name)
            free = self.budget.gb - self.resident_gb()
            if need > free + SLACK_GB:
                now = time.monotonic()
                wanting = {n: t for n, t in self._waiting.items() if t and self._needs_load(n)}
                if choose_load(wanting, now=now, max_wait_s=self.config.serving.max_wait_s) != name:
                    return False
                chosen = self._victims(need - free, now)
                if chosen is None:
                    if now - min(self._waiting[name]) >= self.config.serving.max_wait_s:
                        self._drain_for(name, need - free)
                    return False
                victims = chosen
        self.supervisor.mark(name, "starting")
        for victim in victims:
            self.supervisor.mark(victim, "stopping")
        task = asyncio.ensure_future(self._swap(name, victims))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by its waiters, or nobody
        self._loading[name] = task
        return True

    def _needs_load(self, name: str) -> bool:
        return name not in self._loading and not self.is_loaded(name)

    def _rank(self, names: list[str]) -> list[str]:
        # Requests waiting right now are the nearest known uses, then the batch plan.
        upcoming = [n for n, t in self._waiting.items() if t] + self._upcoming
        policy = self.config.serving.eviction
        return rank_victims(names, policy=policy, last_used=self._last_used, upcoming=upcoming)

    def _victims(self, missing_gb: float, now: float) -> list[str] | None:
        """Idle experts to evict, in policy order, until enough memory is free; None: wait. If one of
        them was used less than ``admission_window_s`` ago, wait too: its next request may be close."""
        idle = [n for n in self.supervisor.in_state("ready") if not self.in_use.get(n)]
        window = self.config.serving.admission_window_s
        victims: list[str] = []
        for name in self._rank([n for n in idle if n not in self.detached.adopted]):
            if missing_gb <= SLACK_GB:
                break
            if name not in self._draining and now - self._last_used.get(name, 0.0) < window:
                return None
            victims.append(name)
            missing_gb -= self.budget.footprint(name)
        return victims if missing_gb <= SLACK_GB else None

    def _drain_for(self, name: str, missing_gb: float) -> None:
        busy = [n for n in self.supervisor.in_state("ready") if n not in self.detached.adopted]
        for victim in self._rank(busy):
            if missing_gb <= SLACK_GB:
                break
            self._draining.setdefault(victim, name)
            missing_gb -= self.budget.footprint(victim)

    async def _wait_change(self) -> None:
        """Wait for a lease to end or a load to finish; wake up now and then for the time-based rules
        (admission window, max wait)."""
        await self.changes.wait(min(max(self.config.serving.admission_window_s, 0.01), 0.25))

    # --------------------------------------------------------------------------- load and evict

    async def _swap(self, name: str, victims: list[str]) -> str:
        try:
            for victim in victims:
                await self._evict(victim)
            return await self._load(name)
        except BaseException as exc:
            self.supervisor.mark(name, "failed", exc.reason if isinstance(exc, ExpertError) else repr(exc))
            raise
        finally:
            self._loading.pop(name, None)
            self.changes.notify()

    async def _evict(self, name: str) -> None:
        self._count(self.evictions, name)
        self._draining.pop(name, None)
        await self.supervisor.park(name)

    async def _load(self, name: str) -> str:
        url = await self.supervisor.wake(name)  # it was asleep: the process is there, only the weights move
        if url is None:
            if (adopted := await self.detached.adopt(name)) is not None:
                return adopted
            url = (await self.supervisor.start(name, detach=False)).url
        self._count(self.loads, name)
        self.supervisor.mark(name, "ready")
        self._last_used[name] = time.monotonic()
        return url
