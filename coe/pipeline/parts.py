"""The strategy objects and stores one CoE uses, each built once, on first use.

Why lazy: building a router loads an encoder (seconds), sessions and the cache open stores, so
``CoE(...)`` stays instant and ``import coe`` light. Why one place: the stages, the facade, the
server and ``coe validate`` (coe.pipeline.readiness) all reach the same objects, built the same way, under
one lock (concurrent first requests build each object once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar

from coe import plugins
from coe.capabilities import expert_capabilities
from coe.config import CoEConfig
from coe.config.routing import PluginAggregatorConfig
from coe.experts.pool import ExpertPool
from coe.protocols import Aggregator, AggregatorFactory, Router

if TYPE_CHECKING:
    from coe.retrieval.retriever import Retriever
    from coe.sessions import Sessions
    from coe.signals.cache.runtime import SemanticCache
    from coe.signals.stage import SignalStage
    from coe.traces import Recorder

T = TypeVar("T")
StoreKind = Literal["memory", "sqlite", "redis"]


class Parts:
    """``store``: where sessions and the cache live when the registry does not say (the library keeps
    them in memory; ``coe serve`` passes sqlite, so a restart keeps them). ``traces``: whether this
    CoE records its own answers (the server records under its response ids instead)."""

    def __init__(self, config: CoEConfig, pool: ExpertPool, store: StoreKind, traces: bool) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.traces = traces
        self._built: dict[str, object] = {}
        self._lock = threading.Lock()

    def _once(self, key: str, build: Callable[[], T]) -> T:
        if key not in self._built:
            with self._lock:
                if key not in self._built:
                    self._built[key] = build()
        return self._built[key]  # type: ignore[return-value]

    def built(self, key: str) -> object | None:
        """The object if it was built already (closing, or reusing the router's vector), else None."""
        return self._built.get(key)

    @property
    def router(self) -> Router:
        return self._once(
            "router", lambda: plugins.router_factory(self.config.router.type).from_config(self.config)
        )

    async def arouter(self) -> Router:
        """``router`` from async code: building it loads the encoder (seconds), so off the loop."""
        built = self._built.get("router")
        return built if built is not None else await asyncio.to_thread(lambda: self.router)  # type: ignore[return-value]

    @property
    def aggregator(self) -> Aggregator:
        return self._once("aggregator", self._aggregator)

    def _aggregator(self) -> Aggregator:
        cfg = self.config.aggregator
        factory = plugins.aggregator_factory(cfg.type)
        if isinstance(factory, AggregatorFactory):
            return factory.from_config(cfg)
        # a plug-in written against the free options mapping
        return factory.from_options(cfg.options if isinstance(cfg, PluginAggregatorConfig) else {})

    @property
    def retriever(self) -> Retriever | None:
        """The retrieval gate and index; None without a ``retrieval`` block."""
        if self.config.retrieval is None:
            return None
        from coe.retrieval.retriever import Retriever

        return self._once("retriever", lambda: Retriever(self.config))

    @property
    def signals(self) -> SignalStage | None:
        """The checks before routing; None without a guard or PII block."""
        if self.config.signals.guard is None and self.config.signals.pii is None:
            return None
        from coe.signals.stage import SignalStage

        return self._once("signals", lambda: SignalStage(self.config))

    @property
    def sessions(self) -> Sessions | None:
        """The conversation sessions; None when ``router.sessions.enabled`` is false."""
        if not self.config.router.sessions.enabled:
            return None
        from coe.sessions import build_sessions

        return self._once("sessions", lambda: build_sessions(self.config, self.store, self.pool.state_dir))

    async def asessions(self) -> Sessions | None:
        """``sessions`` from async code: the first call may load the encoder, so off the loop."""
        if not self.config.router.sessions.enabled or "sessions" in self._built:
            return self.sessions
        return await asyncio.to_thread(lambda: self.sessions)

    @property
    def cache(self) -> SemanticCache | None:
        """The semantic response cache; None without ``signals.cache``."""
        from coe.signals.cache.runtime import build_cache

        return self._once("cache", lambda: build_cache(self.config, self.store, self.pool.state_dir))

    @property
    def recorder(self) -> Recorder | None:
        """The trace store's writer when this CoE records its own answers."""
        if not self.traces:
            return None
        from coe.traces import Recorder

        return self._once("recorder", lambda: Recorder(self.config, self.pool.state_dir))

    def capabilities(self, name: str) -> frozenset[str]:
        """What expert ``name`` serves now: declared, else detected from its engine, else defaults."""
        return expert_capabilities(self.config.experts[name], self.pool.supervisor.detected.get(name))[0]

    async def aclose(self) -> None:
        """Close what was built (stores, the trace writer); the pool is the caller's to stop."""
        sessions, cache, recorder = self.built("sessions"), self.built("cache"), self.built("recorder")
        if recorder is not None:
            await asyncio.to_thread(recorder.close)  # type: ignore[attr-defined]
        if sessions is not None:
            await sessions.aclose()  # type: ignore[attr-defined]
        if cache is not None:
            await cache.aclose()  # type: ignore[attr-defined]
