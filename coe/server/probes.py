"""What /readyz answers, and the readiness a generating request is held to.

Readiness has two parts: the strategy objects (router, and whatever coe.pipeline.readiness.problems builds)
load, and the experts are up or loadable. The first is checked once (at start-up by the warm-up, else
by the first /readyz or routed request) and kept: a broken artefact does not repair itself while the
server runs. /readyz never waits long for it (a probe has a timeout of its own). A request never gets
a 500 for it: it gets 503 naming the registry key that failed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from coe.orchestrator import CoE
from coe.pipeline.readiness import problems
from coe.server.errors import APIError

PROBE_WAIT_S = 1.0  # how long /readyz waits for the check before saying it still runs


class Readiness:
    """``coe.pipeline.readiness.problems`` of one CoE, computed once in a thread of its own (building a router
    loads its encoder: seconds), whichever caller asks first: the warm-up, /readyz or a request."""

    BUILDING = "strategies"  # /readyz's key while the check runs

    def __init__(self, coe: CoE) -> None:
        self.coe = coe
        self._future: Future[dict[str, str]] | None = None
        self._lock = threading.Lock()

    def start(self) -> Future[dict[str, str]]:
        with self._lock:
            if self._future is None:
                self._future = Future()
                threading.Thread(
                    target=self._run, args=(self._future,), name="coe-readiness", daemon=True
                ).start()
            return self._future

    def _run(self, future: Future[dict[str, str]]) -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(problems(self.coe.parts))
        except BaseException as exc:  # problems() reports what it can build; this is its own bug
            future.set_exception(exc)

    @property
    def known(self) -> dict[str, str] | None:
        """What the check found, or None while it has not finished (or not started)."""
        future = self._future
        return future.result() if future is not None and future.done() else None

    async def check(self) -> dict[str, str]:
        """Key path -> message; empty when every strategy object builds. Waits for the check."""
        return await asyncio.wrap_future(self.start())

    async def status(self, wait_s: float) -> dict[str, str]:
        """``check`` for a probe, which must answer quickly: after ``wait_s`` a check still running is
        reported as one problem (``BUILDING``), and the next probe asks again."""
        running = asyncio.wrap_future(self.start())
        done, _ = await asyncio.wait({running}, timeout=wait_s)
        if done:
            return running.result()
        return {self.BUILDING: "still being built (the router loads its encoder); ask again"}

    async def require(self, routed: bool) -> None:
        """503 naming what failed. A routed request (model ``coe``) checks now, since it would build
        the router anyway; a pinned one is held only to what a check already found (it skips the
        router, so it does not pay for building it)."""
        found = self.known  # once the check has finished: no future to wait on, per request
        if found is None:
            found = await self.check() if routed else {}
        if found:
            said = "; ".join(f"{key}: {why}" for key, why in found.items())
            raise APIError(503, f"CoE is not ready: {said}", code="not_ready", type="api_error")


async def ready_body(coe: CoE, readiness: Readiness, exposure: str | None) -> tuple[dict[str, Any], int]:
    """(/readyz's body, its status): 503 naming each strategy key and each expert that is not ready."""
    not_ready = dict(await readiness.status(PROBE_WAIT_S))
    # Under a memory budget an evicted (cold) or sleeping expert is loadable on demand, not down,
    # unless it failed to start or is larger than the whole budget.
    loadable = {"ready", "asleep", "cold"} if coe.pool.budget.gb is not None else {"ready"}
    for s in await coe.pool.status():
        if s.state in ("cold", "asleep") and s.state in loadable and not s.detail:
            why: str | None = await asyncio.to_thread(coe.pool.budget.never_fits, s.name)
            s.detail = why or ""
        ready = (s.state in loadable and not (s.state in ("cold", "asleep") and s.detail)) or (
            s.state == "external" and s.detail in ("reachable", "hosted")
        )
        if not ready:
            not_ready[s.name] = s.detail or s.state
    open_api = {"unauthenticated": True, "warning": exposure} if exposure else {}
    if not_ready:
        return {"status": "not ready", "not_ready": not_ready, **open_api}, 503
    return {"status": "ready", **open_api}, 200
