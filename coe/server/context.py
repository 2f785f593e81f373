"""One generating request as the server carries it through the engine: its slot into each
expert's slots, the experts it tried, and what the dashboard and telemetry will see of it.

Why an object handed down and not context variables: the route makes it, the gateway passes its
``admit`` to ``CoE.aask``/``astream`` (entered around each call to one expert of this request) and
notes into its ``observed``, so a reader follows one argument instead of a variable set in one module
and read in another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from starlette.types import Scope

from coe.experts.calls import Slot
from coe.server.limits import ExpertLimiter
from coe.server.observe import Observed, observed_in


@dataclass
class RequestContext:
    limiter: ExpertLimiter
    observed: Observed
    guard: Slot | None = None  # entered before the limiter's slot (the Ray ingress's lost-replica check)
    tried: list[str] = field(default_factory=list)  # experts admitted, in order; the last one answers

    @classmethod
    def of(cls, scope: Scope, limiter: ExpertLimiter, guard: Slot | None = None) -> RequestContext:
        """The context of the request ``scope`` names (its Observed from the observe middleware)."""
        return cls(limiter, observed_in(scope), guard)

    def slot(self, name: str) -> AbstractAsyncContextManager[object]:
        """The request's slot with expert ``name`` (429 when its queue is full), noted as tried."""
        self.tried.append(name)
        return self.limiter.slot(name) if self.guard is None else self._guarded(name, self.guard)

    @asynccontextmanager
    async def _guarded(self, name: str, guard: Slot) -> AsyncIterator[None]:
        async with guard(name), self.limiter.slot(name):
            yield
