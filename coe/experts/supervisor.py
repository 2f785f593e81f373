"""The expert processes CoE starts itself: start, sleep, wake and stop them, notice one that died on
its own (a crash) and refuse to start it again past a restart limit, and ask each started engine what
it can do. It records each expert's state and last error, which the other parts of the pool read;
when to start or stop a process is the scheduler's decision, not this module's.

Experts that share a process (coe.experts.groups) share everything recorded here: asked about any
of them, it answers for the process (their state, error, server); a start, wake, crash or what the
engine said it can do is counted for each of them, so that a reader keyed by expert sees it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Literal

from coe.config import CoEConfig, ExpertConfig
from coe.errors import ExpertError, ModelNotFoundError
from coe.experts.detect import Detected, detect
from coe.experts.engines import prepare_server
from coe.experts.groups import ProcessGroups
from coe.experts.process import ServerProcess
from coe.experts.statedir import log_path

State = Literal["cold", "starting", "ready", "asleep", "stopping", "external", "failed"]
RESIDENT: tuple[State, ...] = ("starting", "ready", "stopping")  # states that hold memory


def expert_with_url(config: CoEConfig, name: str) -> ExpertConfig:
    """The expert's configuration, if it is one CoE reaches by URL (managed or ``endpoint:``)."""
    expert = config.experts.get(name)
    if expert is None:
        raise ExpertError(name, f"no such expert; known: {', '.join(sorted(config.experts))}")
    if expert.provider is not None:
        raise ExpertError(name, "provider experts are called through litellm and have no URL")
    return expert


class Supervisor:
    def __init__(self, config: CoEConfig, on_change: Callable[[], None]) -> None:
        self.config = config
        self.groups = ProcessGroups(config)
        self._servers: dict[str, ServerProcess] = {}  # by process, as are the states and errors
        self._states: dict[str, State] = {}
        self._errors: dict[str, str] = {}
        self.starts: dict[str, int] = {}  # processes started per expert
        self.wakes: dict[str, int] = {}  # wakes from sleep
        self.crashes: dict[str, int] = {}  # processes found dead that we had not stopped
        self._crash_caps: dict[str, int] = {}  # expert -> crashes past which it is not started again
        # What each started or adopted engine said it can do (coe/experts/detect.py), for routing.
        self.detected: dict[str, Detected] = {}
        self._on_change = on_change  # a crash frees memory: whoever waits for it must look again
        self._guard = threading.Lock()
        # Stop our processes at interpreter exit without keeping every supervisor alive until then.
        weakref.finalize(self, _stop_servers, self._servers)

    # ------------------------------------------------------------------------ what is recorded

    def state(self, name: str) -> State:
        return self._states.get(self.groups.host(name), "cold")

    def error(self, name: str) -> str | None:
        """Why the expert last failed to start or died, if it did."""
        return self._errors.get(self.groups.host(name))

    def mark(self, name: str, state: State, why: str | None = None) -> None:
        """Record the expert's state (the scheduler marks memory it reserves: starting, stopping) and,
        given one, why it failed."""
        host = self.groups.host(name)
        self._states[host] = state
        if why is not None:
            self._errors[host] = why

    def note_error(self, name: str, why: str) -> None:
        """Record why the expert failed unless an earlier, first cause is already recorded."""
        self._errors.setdefault(self.groups.host(name), why)

    def in_state(self, *states: State) -> list[str]:
        """The processes (each named after its first expert) in any of these states."""
        return [n for n, s in self._states.items() if s in states]

    def server(self, name: str) -> ServerProcess | None:
        """Our process for the expert (a sleeping one's included), if we hold one."""
        return self._servers.get(self.groups.host(name))

    def _count(self, counter: dict[str, int], host: str) -> None:
        for member in self.groups.members(host):
            counter[member] = counter.get(member, 0) + 1

    @property
    def running(self) -> dict[str, int]:
        """Our live processes (a sleeping vLLM expert's included) by expert."""
        return {n: s.pid for n, s in self._servers.items() if s.pid and s.alive()}

    # --------------------------------------------------------------------------------- crashes

    def reap(self, name: str) -> str | None:
        """Notice a process that died on its own (a crash): mark it failed so that its next use starts
        it again. Returns why it died, or None while it is fine."""
        name = self.groups.host(name)
        server = self._servers.get(name)
        if server is None or server.alive() or self.state(name) not in ("ready", "asleep"):
            return None
        code = server.proc.returncode if server.proc is not None else -1
        with self._guard:
            self._servers.pop(name, None)
        self._count(self.crashes, name)
        self.mark(name, "failed", server.exit_reason(code if code is not None else -1, "unexpectedly"))
        self._on_change()
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

    def refuse_past_limit(self, name: str) -> None:
        """Raise the crash's reason if the expert crashed past the restart limit in force."""
        cap = self._crash_caps.get(name)
        if cap is not None and self.crashes.get(name, 0) > cap:
            why = self._errors.get(self.groups.host(name)) or "its process crashed"
            raise ExpertError(name, why.split("\n")[0])

    # ---------------------------------------------------------------------- start, sleep, stop

    async def start(self, name: str, detach: bool) -> ServerProcess:
        """Start a process for the expert and wait until it answers /health. A detached process (``coe
        experts up``) is left to outlive us: it is not ours to stop afterwards. A shared process is
        started once, under its group's name, for all its experts."""
        name = self.groups.host(name)
        spec = self.config.experts[name].serve
        assert spec is not None
        log = log_path(self.config, name)
        try:
            server = await asyncio.to_thread(prepare_server, name, self.config, log)
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
        self._count(self.starts, name)
        await self.detect(name, server.root)
        if detach:
            with self._guard:
                self._servers.pop(name)
        return server

    async def detect(self, name: str, root: str) -> None:
        """Ask the engine at ``root`` what the expert can do (tools, vision, ...), for routing."""
        spec = self.config.experts[name].serve
        if spec is not None and (found := await detect(spec.engine, root)) is not None:
            self.detected.update(dict.fromkeys(self.groups.members(self.groups.host(name)), found))

    async def wake(self, name: str) -> str | None:
        """Wake the expert's sleeping process (only the weights move) and return its URL; None: there
        is none to wake."""
        name = self.groups.host(name)
        server = self._servers.get(name)
        if server is None or not server.can_sleep or not server.alive():
            return None
        await server.wake()
        self._count(self.wakes, name)
        return server.url

    async def park(self, name: str) -> None:
        """Free the expert's memory: put a vLLM process to sleep (asleep), stop any other (cold); a
        shared process, and so every expert it serves."""
        name = self.groups.host(name)
        server = self._servers.get(name)
        if server is not None and server.can_sleep and server.alive():
            try:
                await server.sleep()
                self.mark(name, "asleep")
                return
            except ExpertError as exc:  # cannot sleep: stop it, the memory must be freed
                self._errors[name] = exc.reason
        if server is not None:
            await asyncio.to_thread(server.stop)
            with self._guard:
                if self._servers.get(name) is server:
                    self._servers.pop(name)
        self.mark(name, "cold")

    def stop_all(self) -> None:
        """Stop every process we started (not the detached ones of `coe experts up`)."""
        with self._guard:
            names = list(self._servers)
            _stop_servers(self._servers)
        for name in names:
            self.mark(name, "cold")


def _stop_servers(servers: dict[str, ServerProcess]) -> None:
    """Stop and forget the given servers (also run by the supervisor's finalizer at exit)."""
    for name in list(servers):
        servers.pop(name).stop()
