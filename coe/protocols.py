"""The two extension points and their optional capabilities. A strategy is any class with this shape;
``coe.plugins`` finds it by name, and the engine asks for a capability with ``isinstance`` on these
runtime-checkable protocols, never by probing attributes.

The factories are generic in what they are built from (``CoEConfig`` for a router, its
``AggregatorConfig`` block for an aggregator): this module sits below ``coe.config`` (which finds a
strategy's settings through ``coe.plugins``, which checks strategies against these protocols), so it
names no registry type.

Routers are batched by design (``route`` takes a list) because the batch runner routes a whole queue
before it loads any expert, and one encoder call over N prompts is far cheaper than N calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from coe.types import Answer, ExpertAnswer, Request, RouteDecision, StreamEvent, Trace

# What a factory is built from: the registry (CoEConfig) for a router, its block for an aggregator.
Settings_contra = TypeVar("Settings_contra", contravariant=True)

# Ask one expert (``CoE.call_expert``): given to aggregators and to routers that call experts.
CallExpert = Callable[[str, Request], Awaitable[ExpertAnswer]]
# Stream one expert's answer: text deltas, then one ``done`` event.
StreamExpert = Callable[[str, Request], AsyncIterator[StreamEvent]]


@runtime_checkable
class Router(Protocol):
    name: str

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]: ...


@runtime_checkable
class AsyncRouter(Protocol):
    """A router that may call experts while routing (the skills router's keyword annotator).
    ``CoE.aask`` uses ``aroute`` when a router has it; ``route`` stays the path that calls no expert
    (``coe route``, batch routing). One that may or may not call experts, depending on its
    settings, says which with ``MayAskExperts``."""

    name: str

    async def aroute(self, requests: Sequence[Request], call_expert: CallExpert) -> list[RouteDecision]: ...


@runtime_checkable
class MayAskExperts(Protocol):
    """An ``AsyncRouter`` whose settings decide whether it calls experts (the category router asks
    one only with ``classifier: llm``). When it does not, the pipeline routes with ``route``,
    micro-batched across concurrent requests (coe.pipeline.batching)."""

    @property
    def asks_experts(self) -> bool: ...


@runtime_checkable
class WarmRouter(Protocol):
    """A router with something to load before its first request (encoders); ``coe serve`` calls
    ``warm`` at start-up so that the first users do not pay it."""

    def warm(self) -> None: ...


@runtime_checkable
class RouterFactory(Protocol[Settings_contra]):
    """What ``router.type`` names: a class built from the whole registry, ``CoEConfig`` (its settings
    are ``config.router``, validated against the class's ``Config`` model)."""

    def from_config(self, config: Settings_contra) -> Router: ...


@dataclass
class Context:
    """What an aggregator may use besides the answers: the decision, the trace to append to, and
    a way to call any expert (for synthesis or judging), whole or streamed (``stream_expert`` yields
    text deltas then one ``done`` event; None where the caller cannot stream)."""

    decision: RouteDecision
    trace: Trace
    call_expert: CallExpert
    options: dict[str, object] = field(default_factory=dict)
    stream_expert: StreamExpert | None = None


@runtime_checkable
class Aggregator(Protocol):
    name: str

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer: ...


@runtime_checkable
class StreamingAggregator(Protocol):
    """An aggregator whose answer can stream token by token (an LLM synthesis); ``CoE.astream`` uses
    it when several experts answered, and sends other aggregators' answers as one delta."""

    def stream(
        self, request: Request, answers: list[ExpertAnswer], ctx: Context
    ) -> AsyncIterator[StreamEvent]: ...


@runtime_checkable
class AggregatorFactory(Protocol[Settings_contra]):
    """What ``aggregator.type`` names: a class built from its settings (``config.aggregator``, an
    ``AggregatorConfig``)."""

    def from_config(self, cfg: Settings_contra) -> Aggregator: ...


@runtime_checkable
class OptionsAggregatorFactory(Protocol):
    """A plug-in aggregator built from the free ``options`` mapping (it declares no ``Config``)."""

    def from_options(self, options: dict[str, object]) -> Aggregator: ...
