"""The expert pool: where each expert lives, which experts are loaded, and who waits for whom.

``async with pool.lease(name) as url:`` is the whole contract for the rest of CoE. A leased expert is
never stopped, put to sleep or evicted until the block exits (a whole stream included).

* ``endpoint:`` experts are external: their URL is returned as is and they are never managed.
* ``serve:`` experts are loaded on first use: cold -> starting -> ready. A vLLM expert that is evicted
  goes to sleep (ready -> stopping -> asleep, weights in host RAM) and wakes on its next use; a
  llama.cpp expert is stopped (-> cold). A process that dies on its own is marked failed and started
  again on its next use (``crashes`` counts those).
* ``coe experts up`` starts experts detached; they are adopted (reused, never evicted, counted in the
  budget) and left running.

Memory budget (``serving.memory_budget_gb``; None = no limit, everything loads on first use). Each
expert weighs its footprint (coe.experts.footprint). An expert that does not fit evicts idle
experts chosen by ``serving.eviction`` (coe.experts.planner): ``lru``, or ``lookahead`` (next use
furthest away in the known queue: the batch runner's plan given to ``expect()``, and the requests
waiting right now).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from coe.config import CoEConfig, ExpertConfig
from coe.errors import ExpertError, ModelNotFoundError
from coe.experts.detached import entry_pid, fingerprint, healthy, read_records, write_records
from coe.experts.detect import Detected, detect
from coe.experts.engines import prepare_server
from coe.experts.footprint import footprint_gb
from coe.experts.models import cache_dir
from coe.experts.planner import choose_load, rank_victims
from coe.experts.process import ServerProcess, stop_pid

State = Literal["cold", "starting", "ready", "asleep", "stopping", "external", "failed"]
_RESIDENT = ("starting", "ready", "stopping")  # states that hold memory


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
        self._servers: dict[str, ServerProcess] = {}
        self._adopted: dict[str, str] = {}  # expert -> url of a server `coe experts up` started
        self._state: dict[str, State] = {}
        self._errors: dict[str, str] = {}
        self.starts: dict[str, int] = {}  # processes started per expert (the orchestrator traces cold starts)
        self.wakes: dict[str, int] = {}  # wakes from sleep
        self.loads: dict[str, int] = {}  # starts + wakes: the swap counter
        self.evictions: dict[str, int] = {}  # stopped or put to sleep to make room
        self.crashes: dict[str, int] = {}  # processes found dead that we had not stopped
        self._crash_caps: dict[str, int] = {}  # expert -> crashes past which it is not started again
        self.in_use: dict[str, int] = {}  # open leases per expert; a leased expert is never evicted
        self._waiting: dict[str, list[float]] = {}  # arrival times of requests waiting for a load
        self._last_used: dict[str, float] = {}
        self._upcoming: list[str] = []
        # expert taking no new leases -> the starved expert it makes room for
        self._draining: dict[str, str] = {}
        self._loading: dict[str, asyncio.Task[str]] = {}
        self._footprints: dict[str, float] = {}
        # What each started or adopted engine said it can do (coe/experts/detect.py), for routing.
        self.detected: dict[str, Detected] = {}
        self._changed: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._guard = threading.Lock()
        # Stop our processes at interpreter exit without keeping every pool alive until then.
        weakref.finalize(self, _stop_servers, self._servers)

    @property
    def budget_gb(self) -> float | None:
        return self.config.serving.memory_budget_gb

    # ------------------------------------------------------------------ where things are recorded

    @property
    def state_dir(self) -> Path:
        if self.config.serving.state_dir:
            path = self.config.resolve_path(self.config.serving.state_dir)
        else:
            key = str(self.config.source.resolve()) if self.config.source else "<memory>"
            path = cache_dir() / "run" / hashlib.sha1(key.encode()).hexdigest()[:12]
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def state_file(self) -> Path:
        return self.state_dir / "experts.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    # ----------------------------------------------------------------------------- the contract

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[str]:
        """Hold an expert for one call (a whole stream included): start or wake it, and keep it from
        being stopped or evicted until the block exits. Yields its OpenAI base URL."""
        url = await self._acquire(name)
        try:
            yield url
        finally:
            self._release(name)

    async def url_for(self, name: str) -> str:
        """Load the expert if needed and return its URL, without holding it."""
        async with self.lease(name) as url:
            return url

    async def warm(self, names: Sequence[str] | None = None) -> list[str]:
        """Load managed experts ahead of use, in order, as many as the budget holds together (all of
        them without a budget); evicts nothing. Returns those loaded; ``status()`` says why the others
        failed."""
        loaded: list[str] = []
        for name in names or [n for n, e in self.config.experts.items() if e.serve is not None]:
            try:
                if self.fits([*loaded, name]):
                    await self.url_for(name)
                    loaded.append(name)
            except ExpertError as exc:
                self._errors.setdefault(name, exc.reason)
        return loaded

    def expect(self, names: Sequence[str]) -> None:
        """The known queue of upcoming uses, nearest first (a batch plan); ``lookahead`` reads it."""
        self._upcoming = list(names)
        self._notify()

    def state(self, name: str) -> State:
        return self._state.get(name, "cold")

    def error(self, name: str) -> str | None:
        """Why the expert last failed to start or died, if it did."""
        return self._errors.get(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._adopted or self.state(name) == "ready"

    def footprint(self, name: str) -> float:
        if name not in self._footprints:
            try:
                self._footprints[name] = footprint_gb(name, self.config)
            except (ModelNotFoundError, FileNotFoundError, ValueError) as exc:
                raise ExpertError(name, str(exc)) from None
        return self._footprints[name]

    def never_fits(self, name: str) -> str | None:
        """Why the expert can never load under the memory budget (it needs more than all of it, or its
        size cannot be known), or None: it is loadable, if need be after evictions."""
        if self.budget_gb is None:
            return None
        try:
            need = self.footprint(name)
        except ExpertError as exc:
            return exc.reason
        if need > self.budget_gb + 1e-9:
            return f"needs {need:.2f} GB, more than serving.memory_budget_gb ({self.budget_gb:g} GB)"
        return None

    def fits(self, names: Sequence[str]) -> bool:
        """Whether these experts can be loaded at the same time under the budget."""
        budget = self.budget_gb
        return budget is None or sum(self.footprint(n) for n in set(names)) <= budget + 1e-9

    def reap(self, name: str) -> str | None:
        """Notice a process that died on its own (a crash): mark it failed so that its next use starts
        it again. Returns why it died, or None while it is fine."""
        server = self._servers.get(name)
        if server is None or server.alive() or self.state(name) not in ("ready", "asleep"):
            return None
        code = server.proc.returncode if server.proc is not None else -1
        with self._guard:
            self._servers.pop(name, None)
        self.crashes[name] = self.crashes.get(name, 0) + 1
        self._state[name] = "failed"
        self._errors[name] = server.exit_reason(code if code is not None else -1, "unexpectedly")
        self._notify()
        return self._errors[name]

    @contextlib.contextmanager
    def restart_limit(self, restarts: int) -> Iterator[None]:
        """Within the block, an expert whose process crashes more than ``restarts`` more times is not
        started again: its callers get the crash's reason. The rule lives here rather than in the caller
        because the call that notices a crash (``reap`` under a lease) is also the one that would start
        the process again; a caller counting crashes itself can be overtaken by a concurrent call."""
        caps = {name: self.crashes.get(name, 0) + restarts for name in self.config.experts}
        previous, self._crash_caps = self._crash_caps, caps
        try:
            yield
        finally:
            self._crash_caps = previous

    def stats(self) -> PoolStats:
        return PoolStats(
            loads=dict(self.loads), evictions=dict(self.evictions), starts=dict(self.starts),
            wakes=dict(self.wakes), crashes=dict(self.crashes),
            resident_gb=round(self._resident_gb(), 3), budget_gb=self.budget_gb,
        )  # fmt: skip

    # ------------------------------------------------------------------------- acquire / release

    async def _acquire(self, name: str) -> str:
        expert = self._expert(name)
        if expert.serve is None:
            return expert.endpoint  # type: ignore[return-value]
        if self.budget_gb is not None and name not in self._footprints:
            await asyncio.to_thread(self.footprint, name)
        arrived = time.monotonic()
        waiting = self._waiting.setdefault(name, [])
        waiting.append(arrived)
        try:
            while True:
                if (url := self._try_lease(name)) is not None:
                    return url
                if (task := self._loading.get(name)) is not None:
                    await asyncio.shield(task)  # a failed load fails every request waiting for it
                elif self.state(name) in ("ready", "stopping") or not self._plan_load(name):
                    await self._wait_change()  # drained or being evicted, or memory is busy
        finally:
            waiting.remove(arrived)
            if not waiting:
                self._draining = {k: v for k, v in self._draining.items() if v != name}
                self._notify()

    def _try_lease(self, name: str) -> str | None:
        url = self._adopted.get(name)
        if url is None:
            self.reap(name)
            server = self._servers.get(name)
            if server is None or self.state(name) != "ready" or name in self._draining:
                return None
            url = server.url
        self.in_use[name] = self.in_use.get(name, 0) + 1
        self._last_used[name] = time.monotonic()
        return url

    def _release(self, name: str) -> None:
        if name in self.in_use:
            self.in_use[name] -= 1
            self._last_used[name] = time.monotonic()
            self._notify()

    def _plan_load(self, name: str) -> bool:
        """Start loading ``name`` (after evicting what must go) if it may load now; False: wait."""
        cap = self._crash_caps.get(name)
        if cap is not None and self.crashes.get(name, 0) > cap:
            raise ExpertError(name, (self._errors.get(name) or "its process crashed").split("\n")[0])
        victims: list[str] = []
        if self.budget_gb is not None:
            if (why := self.never_fits(name)) is not None:
                raise ExpertError(name, why)
            need = self.footprint(name)
            free = self.budget_gb - self._resident_gb()
            if need > free + 1e-9:
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
        self._state[name] = "starting"
        for victim in victims:
            self._state[victim] = "stopping"
        task = asyncio.ensure_future(self._swap(name, victims))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # seen by its waiters, or nobody
        self._loading[name] = task
        return True

    def _needs_load(self, name: str) -> bool:
        return name not in self._loading and name not in self._adopted and self.state(name) != "ready"

    def _rank(self, names: list[str]) -> list[str]:
        # Requests waiting right now are the nearest known uses, then the batch plan.
        upcoming = [n for n, t in self._waiting.items() if t] + self._upcoming
        policy = self.config.serving.eviction
        return rank_victims(names, policy=policy, last_used=self._last_used, upcoming=upcoming)

    def _victims(self, missing_gb: float, now: float) -> list[str] | None:
        """Idle experts to evict, in policy order, until enough memory is free; None: wait. If one of
        them was used less than ``admission_window_s`` ago, wait too: its next request may be close."""
        idle = [n for n, s in self._state.items() if s == "ready" and not self.in_use.get(n)]
        window = self.config.serving.admission_window_s
        victims: list[str] = []
        for name in self._rank([n for n in idle if n not in self._adopted]):
            if missing_gb <= 1e-9:
                break
            if name not in self._draining and now - self._last_used.get(name, 0.0) < window:
                return None
            victims.append(name)
            missing_gb -= self.footprint(name)
        return victims if missing_gb <= 1e-9 else None

    def _drain_for(self, name: str, missing_gb: float) -> None:
        busy = [n for n, s in self._state.items() if s == "ready" and n not in self._adopted]
        for victim in self._rank(busy):
            if missing_gb <= 1e-9:
                break
            self._draining.setdefault(victim, name)
            missing_gb -= self.footprint(victim)

    def _resident_gb(self) -> float:
        held = {n for n, s in self._state.items() if s in _RESIDENT} | set(self._adopted)
        return sum(self._footprints.get(n, 0.0) for n in held)

    # --------------------------------------------------------------------------- load and evict

    async def _swap(self, name: str, victims: list[str]) -> str:
        try:
            for victim in victims:
                await self._evict(victim)
            return await self._load(name)
        except BaseException as exc:
            self._state[name] = "failed"
            self._errors[name] = exc.reason if isinstance(exc, ExpertError) else repr(exc)
            raise
        finally:
            self._loading.pop(name, None)
            self._notify()

    async def _evict(self, name: str) -> None:
        server = self._servers.get(name)
        self.evictions[name] = self.evictions.get(name, 0) + 1
        self._draining.pop(name, None)
        if server is not None and server.can_sleep and server.alive():
            try:
                await server.sleep()
                self._state[name] = "asleep"
                return
            except ExpertError as exc:  # cannot sleep: stop it, the memory must be freed
                self._errors[name] = exc.reason
        if server is not None:
            await asyncio.to_thread(server.stop)
            with self._guard:
                if self._servers.get(name) is server:
                    self._servers.pop(name)
        self._state[name] = "cold"

    async def _load(self, name: str) -> str:
        server = self._servers.get(name)
        if server is not None and server.can_sleep and server.alive():
            await server.wake()  # it was asleep: the process is there, only the weights move
            self.wakes[name] = self.wakes.get(name, 0) + 1
        else:
            adopted = await self._adopt(name)
            if adopted is not None:
                return adopted
            server = await self._spawn(name, detach=False)
        self.loads[name] = self.loads.get(name, 0) + 1
        self._state[name] = "ready"
        self._last_used[name] = time.monotonic()
        return server.url

    async def _spawn(self, name: str, detach: bool) -> ServerProcess:
        """Start a process for the expert and wait until it answers /health."""
        spec = self.config.experts[name].serve
        assert spec is not None
        try:
            server = await asyncio.to_thread(prepare_server, name, self.config, self.log_path(name))
        except (ModelNotFoundError, FileNotFoundError) as exc:
            raise ExpertError(name, str(exc)) from None
        server.spawn(detach=detach)
        with self._guard:
            stale = self._servers.pop(name, None)
            self._servers[name] = server
        if stale is not None:
            await asyncio.to_thread(stale.stop)
        try:
            await server.wait_ready(spec.startup_timeout_s)
        except BaseException:
            await asyncio.to_thread(server.stop)
            with self._guard:
                self._servers.pop(name, None)
            raise
        self.starts[name] = self.starts.get(name, 0) + 1
        await self._detect(name, server.root)
        return server

    async def _detect(self, name: str, root: str) -> None:
        spec = self.config.experts[name].serve
        if spec is not None and (found := await detect(spec.engine, root)) is not None:
            self.detected[name] = found

    def _expert(self, name: str) -> ExpertConfig:
        expert = self.config.experts.get(name)
        if expert is None:
            raise ExpertError(name, f"no such expert; known: {', '.join(sorted(self.config.experts))}")
        if expert.provider is not None:
            raise ExpertError(name, "provider experts are called through litellm and have no URL")
        return expert

    # --------------------------------------------------------------------- waiting for a change

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed[1].set()
            self._changed = None

    async def _wait_change(self) -> None:
        """Wait for a lease to end or a load to finish; wake up now and then for the time-based rules
        (admission window, max wait)."""
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed[0] is not loop:
            self._changed = (loop, asyncio.Event())
        poll = min(max(self.config.serving.admission_window_s, 0.01), 0.25)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed[1].wait(), poll)

    # ---------------------------------------------------------- processes kept by `coe experts up`

    async def _adopt(self, name: str) -> str | None:
        entry = read_records(self.state_file).get(name)
        if not entry or entry.get("fingerprint") != fingerprint(self.config.experts[name]):
            return None
        url = str(entry["url"])
        if entry_pid(entry) is None or not await healthy(url):
            return None
        self._adopted[name] = url
        await self._detect(name, url.rstrip("/").removesuffix("/v1"))
        self._state[name] = "ready"
        if self.budget_gb is not None:
            await asyncio.to_thread(self.footprint, name)  # adopted experts count against the budget
        return url

    async def up(self, names: list[str] | None = None) -> list[ExpertStatus]:
        """Start managed experts detached so they outlive this process (``coe experts up``). Under a
        memory budget, an expert that does not fit beside those already up is left cold."""
        records = read_records(self.state_file)
        skipped: dict[str, str] = {}
        for name in names or [n for n, e in self.config.experts.items() if e.serve is not None]:
            if self._expert(name).serve is None or await self._adopt(name):
                continue
            if not self.fits([*self._adopted, name]):
                skipped[name] = f"not started: over serving.memory_budget_gb ({self.budget_gb:g} GB)"
                continue
            self._state[name] = "starting"
            try:
                server = await self._spawn(name, detach=True)
            except ExpertError as exc:
                self._state[name], self._errors[name] = "failed", exc.reason
                raise
            with self._guard:
                self._servers.pop(name)
            fp = fingerprint(self.config.experts[name])
            records[name] = {"pid": server.pid, "url": server.url, "fingerprint": fp}
            write_records(self.state_file, records)
            self._adopted[name] = server.url
            self._state[name] = "ready"
        statuses = await self.status()
        for s in statuses:
            s.detail = skipped.get(s.name, s.detail)
        return statuses

    def down(self) -> list[str]:
        """Stop what ``coe experts up`` started (``coe experts down``)."""
        stopped = []
        for name, entry in read_records(self.state_file).items():
            if (pid := entry_pid(entry)) is not None:
                stop_pid(pid)
                stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        self._adopted.clear()
        return stopped

    async def status(self) -> list[ExpertStatus]:
        recorded = read_records(self.state_file)
        out = []
        for name, expert in self.config.experts.items():
            if expert.serve is None:
                where = expert.endpoint or expert.provider
                up = expert.endpoint is not None and await healthy(expert.endpoint)
                detail = "reachable" if up else ("unreachable" if expert.endpoint else "hosted")
                out.append(ExpertStatus(name, expert.kind, "external", where, None, detail))
                continue
            self.reap(name)
            server, entry = self._servers.get(name), recorded.get(name)
            size = self._footprints.get(name, expert.memory_gb)
            if server is not None and server.alive():
                out.append(ExpertStatus(name, "serve", self.state(name), server.url, server.pid, "", size))
            elif entry is not None and (pid := entry_pid(entry)) is not None:
                url = str(entry["url"])
                state: State = "ready" if await healthy(url) else "starting"
                out.append(ExpertStatus(name, "serve", state, url, pid, "up (detached)", size))
            else:
                detail = self._errors.get(name, "")
                out.append(ExpertStatus(name, "serve", self.state(name), None, None, detail, size))
        return out

    # ---------------------------------------------------------------------------------- cleanup

    def stop_all(self) -> None:
        """Stop every process this pool started (not the detached ones of `coe experts up`)."""
        with self._guard:
            names = list(self._servers)
            _stop_servers(self._servers)
        for name in names:
            self._state[name] = "cold"

    @property
    def running(self) -> dict[str, int]:
        """Our live processes (a sleeping vLLM expert's included) by expert."""
        return {n: s.pid for n, s in self._servers.items() if s.pid and s.alive()}


def _stop_servers(servers: dict[str, ServerProcess]) -> None:
    """Stop and forget the given servers (also run by the pool's finalizer at exit)."""
    for name in list(servers):
        servers.pop(name).stop()
