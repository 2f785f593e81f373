"""The two extension points. A strategy is any class with this shape; see coe.plugins for lookup.

Routers are batched by design (``route`` takes a list) because the batch runner routes a whole queue
before it loads any expert, and one encoder call over N prompts is far cheaper than N calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from coe.types import Answer, ExpertAnswer, Request, RouteDecision, StreamEvent, Trace

if TYPE_CHECKING:
    from coe.config import CoEConfig

# Ask one expert (``CoE.call_expert``): given to aggregators and to routers that call experts.
CallExpert = Callable[[str, Request], Awaitable[ExpertAnswer]]


@runtime_checkable
class Router(Protocol):
    name: str

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]: ...


@dataclass
class Context:
    """What an aggregator may use besides the answers: the decision, the trace to append to, and
    a way to call any expert (for synthesis or judging), whole or streamed (``stream_expert`` yields
    text deltas then one ``done`` event; None where the caller cannot stream)."""

    decision: RouteDecision
    trace: Trace
    call_expert: CallExpert
    options: dict[str, object] = field(default_factory=dict)
    stream_expert: Callable[[str, Request], AsyncIterator[StreamEvent]] | None = None


@runtime_checkable
class Aggregator(Protocol):
    name: str

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer: ...


@runtime_checkable
class AsyncRouter(Protocol):
    """A router that may call experts while routing (the skills router's keyword annotator).
    ``CoE.aask`` uses ``aroute`` when a router has it; ``route`` stays the path that calls no expert
    (``coe route``, batch routing)."""

    name: str

    async def aroute(self, requests: Sequence[Request], call_expert: CallExpert) -> list[RouteDecision]: ...


@runtime_checkable
class WarmRouter(Protocol):
    """A router with something to load before its first request (encoders); ``coe serve`` calls
    ``warm`` at start-up so that the first users do not pay it."""

    def warm(self) -> None: ...


class RouterFactory(Protocol):
    def from_config(self, config: CoEConfig) -> Router: ...
