"""What /readyz answers, and the readiness a generating request is held to.

Readiness has two parts: the strategy objects (router, and whatever coe.readiness.problems builds)
load, and the experts are up or loadable. The first is checked once (at start-up by the warm-up, else
by the first /readyz or routed request) and kept: a broken artefact does not repair itself while the
server runs. A request never gets a 500 for it: it gets 503 naming the registry key that failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from coe.orchestrator import CoE
from coe.readiness import problems
from coe.server.errors import APIError


class Readiness:
    """``coe.readiness.problems`` of one CoE, computed once, off the event loop."""

    def __init__(self, coe: CoE) -> None:
        self.coe = coe
        self.known: dict[str, str] | None = None  # None: not checked yet
        self._lock = asyncio.Lock()

    async def check(self) -> dict[str, str]:
        """Key path -> message; empty when every strategy object builds."""
        if self.known is None:
            async with self._lock:  # concurrent first callers wait for the one build
                if self.known is None:
                    self.known = await asyncio.to_thread(problems, self.coe)
        return self.known

    async def require(self, routed: bool) -> None:
        """503 naming what failed. A routed request (model ``coe``) checks now, since it would build
        the router anyway; a pinned one is held only to what a check already found (it skips the
        router, so it does not pay for building it)."""
        found = await self.check() if routed else (self.known or {})
        if found:
            said = "; ".join(f"{key}: {why}" for key, why in found.items())
            raise APIError(503, f"CoE is not ready: {said}", code="not_ready", type="api_error")


async def ready_body(coe: CoE, readiness: Readiness, exposure: str | None) -> tuple[dict[str, Any], int]:
    """(/readyz's body, its status): 503 naming each strategy key and each expert that is not ready."""
    not_ready = dict(await readiness.check())
    # Under a memory budget an evicted (cold) or sleeping expert is loadable on demand, not down,
    # unless it failed to start or is larger than the whole budget.
    loadable = {"ready", "asleep", "cold"} if coe.pool.budget_gb is not None else {"ready"}
    for s in await coe.pool.status():
        if s.state in ("cold", "asleep") and s.state in loadable and not s.detail:
            why: str | None = await asyncio.to_thread(coe.pool.never_fits, s.name)
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
