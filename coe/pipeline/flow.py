"""One request on its way through the pipeline: what the caller gave, and what each stage added.

Every stage takes a list of flows and fills in its part of each (``ask`` and the server pass one flow,
batch mode passes all of them), so a stage is one unit that can be run and tested alone, and the
batch and the single request cannot drift apart. A stage that refuses one request (a guard's block,
an unknown pinned expert, no capable expert) sets that flow's ``failure``; the later stages skip it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coe.errors import CoEError
from coe.experts.calls import Slot
from coe.types import Answer, Request, RouteDecision, SessionRef, Trace

if TYPE_CHECKING:
    from coe.sessions import Turn
    from coe.signals.cache.runtime import Pending


@dataclass
class Flow:
    """``decision`` starts as the caller's (the server's ``coe/category/NAME``) and ends as the one the
    experts are called with; ``original`` is the request after PII redaction and before retrieval,
    which is what the trace store keeps."""

    request: Request
    trace: Trace = field(default_factory=Trace)
    decision: RouteDecision | None = None
    session: SessionRef | None = None
    slot: Slot | None = None
    started: float = field(default_factory=time.perf_counter)
    original: Request | None = None
    turn: Turn | None = None
    cached: Answer | None = None
    pending: Pending | None = None
    failure: CoEError | None = None
    asked: str = field(init=False)

    def __post_init__(self) -> None:
        self.asked = _asked(self.request, self.decision)

    @property
    def live(self) -> bool:
        """Still to be answered by an expert: not refused, not answered from the cache."""
        return self.failure is None and self.cached is None

    def routed(self) -> RouteDecision:
        assert self.decision is not None, "the route stage runs before this"
        return self.decision


def _asked(request: Request, decision: RouteDecision | None) -> str:
    """What the caller asked for, as the cache's ``model`` scope: a pinned expert, a pinned
    category, or routing (the server's ``coe/expert/NAME``, ``coe/category/NAME``, ``coe``)."""
    if request.expert is not None:
        return f"expert:{request.expert}"
    if decision is not None:
        return f"decision:{decision.category}:{','.join(decision.experts)}"
    return "routed"
