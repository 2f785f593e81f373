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
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

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


class _Once(Generic[T]):
    """One object, built by the first caller that needs it and by no other."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        # Its own lock: building the router (seconds) must not hold up the first use of another part.
        self._lock = threading.Lock()
        self.done = False
        self.value: T | None = None

    def get(self) -> T:
        if not self.done:
            with self._lock:
                if not self.done:
                    self.value, self.done = self._build(), True
        return self.value  # type: ignore[return-value]  # set by _build, which may return None on purpose


class Parts:
    """``store``: where sessions and the cache live when the registry does not say (the library keeps
    them in memory; ``coe serve`` passes sqlite, so a restart keeps them). ``traces``: whether this
    CoE records its own answers (the server records under its response ids instead)."""

    def __init__(self, config: CoEConfig, pool: ExpertPool, store: StoreKind, traces: bool) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.traces = traces
        self._router = _Once(self._build_router)
        self._aggregator = _Once(self._build_aggregator)
        self._retriever = _Once(self._build_retriever)
        self._signals = _Once(self._build_signals)
        self._sessions = _Once(self._build_sessions)
        self._cache = _Once(self._build_cache)
        self._recorder = _Once(self._build_recorder)

    @property
    def router(self) -> Router:
        return self._router.get()

    @property
    def built_router(self) -> Router | None:
        """The router if something built it already (the cache reuses its vector; nothing builds it)."""
        return self._router.value

    async def arouter(self) -> Router:
        """``router`` from async code: building it loads the encoder (seconds), so off the loop."""
        return self._router.get() if self._router.done else await asyncio.to_thread(self._router.get)

    def _build_router(self) -> Router:
        return plugins.router_factory(self.config.router.type).from_config(self.config)

    @property
    def aggregator(self) -> Aggregator:
        return self._aggregator.get()

    def _build_aggregator(self) -> Aggregator:
        cfg = self.config.aggregator
        factory = plugins.aggregator_factory(cfg.type)
        if isinstance(factory, AggregatorFactory):
            return factory.from_config(cfg)
        # a plug-in written against the free options mapping
        return factory.from_options(cfg.options if isinstance(cfg, PluginAggregatorConfig) else {})

    @property
    def retriever(self) -> Retriever | None:
        """The retrieval gate and index; None without a ``retrieval`` block."""
        return self._retriever.get()

    def _build_retriever(self) -> Retriever | None:
        if self.config.retrieval is None:
            return None
        from coe.retrieval.retriever import Retriever

        return Retriever(self.config)

    @property
    def signals(self) -> SignalStage | None:
        """The checks before routing; None without a guard or PII block."""
        return self._signals.get()

    def _build_signals(self) -> SignalStage | None:
        if self.config.signals.guard is None and self.config.signals.pii is None:
            return None
        from coe.signals.stage import SignalStage

        return SignalStage(self.config)

    @property
    def sessions(self) -> Sessions | None:
        """The conversation sessions; None when ``router.sessions.enabled`` is false."""
        return self._sessions.get()

    async def asessions(self) -> Sessions | None:
        """``sessions`` from async code: the first call may load the encoder, so off the loop."""
        if self._sessions.done or not self.config.router.sessions.enabled:
            return self._sessions.get()
        return await asyncio.to_thread(self._sessions.get)

    def _build_sessions(self) -> Sessions | None:
        if not self.config.router.sessions.enabled:
            return None
        from coe.sessions import build_sessions

        return build_sessions(self.config, self.store, self.pool.state_dir)

    @property
    def cache(self) -> SemanticCache | None:
        """The semantic response cache; None without ``signals.cache``."""
        return self._cache.get()

    def _build_cache(self) -> SemanticCache | None:
        from coe.signals.cache.runtime import build_cache

        return build_cache(self.config, self.store, self.pool.state_dir)

    @property
    def recorder(self) -> Recorder | None:
        """The trace store's recorder when this CoE records its own answers."""
        return self._recorder.get()

    def _build_recorder(self) -> Recorder | None:
        if not self.traces:
            return None
        from coe.traces import Recorder

        return Recorder(self.config, self.pool.state_dir)

    def capabilities(self, name: str) -> frozenset[str]:
        """What expert ``name`` serves now: declared, else detected from its engine, else defaults."""
        return expert_capabilities(self.config.experts[name], self.pool.supervisor.detected.get(name))[0]

    async def aclose(self) -> None:
        """Close what was built (stores, the trace queue); the pool is the caller's to stop."""
        if (recorder := self._recorder.value) is not None:
            await asyncio.to_thread(recorder.close)
        if (sessions := self._sessions.value) is not None:
            await sessions.aclose()
        if (cache := self._cache.value) is not None:
            await cache.aclose()

    def close_recorder(self) -> None:
        """For a CoE that never ran an event loop: only the recorder can have been built then."""
        if (recorder := self._recorder.value) is not None:
            recorder.close()
