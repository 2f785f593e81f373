"""Prometheus metrics, on a registry of their own so that several apps (tests) do not collide."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.signals.verdicts import SignalsTrace
from coe.types import Answer, SessionTrace

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from coe.experts.pool import ExpertPool

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, pool: ExpertPool | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if pool is not None:
            r.register(_PoolCollector(pool))
        self.requests = Counter("coe_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "coe_request_latency_seconds",
            "end-to-end request latency",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "coe_stage_latency_seconds",
            "latency per stage of the trace (route, start, expert, aggregate)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("coe_tokens", "tokens per expert", ["expert", "kind"], registry=r)
        self.fallbacks = Counter(
            "coe_fallbacks",
            "answers given by another candidate than the first",
            ["routed_to", "answered_by"],
            registry=r,
        )
        self.decisions = Counter("coe_decisions", "routing decisions per category", ["category"], registry=r)
        self.rejected = Counter(
            "coe_queue_rejections", "429s because an expert was full", ["expert"], registry=r
        )
        self.stream_errors = Counter(
            "coe_stream_errors", "streams ended by an error after the first token", ["expert"], registry=r
        )
        self.inflight = Gauge("coe_inflight_requests", "requests in progress", registry=r)
        self.sessions = Counter(
            "coe_session_turns",
            "turns by what the session did (new, kept, switched, ...)",
            ["action"],
            registry=r,
        )
        self.session_errors = Counter(
            "coe_session_store_errors",
            "turns routed statelessly because the session store failed",
            registry=r,
        )
        self.trace_records = Counter("coe_trace_records", "requests written to the trace store", registry=r)
        self.trace_dropped = Counter(
            "coe_trace_records_dropped",
            "trace records not kept: queue_full (the trace queue fell behind) or write_error (the disk)",
            ["reason"],
            registry=r,
        )
        self.cache = Counter(
            "coe_cache_lookups",
            "semantic cache lookups by result (hit, miss, skip, error, or refused_REASON: a miss the "
            "verifier would have replayed, refused by the guard for a different date, number, direction, "
            "negation, identifier, entity or too many words) and match (exact, semantic)",
            ["result", "match"],
            registry=r,
        )
        self.cache_errors = Counter(
            "coe_cache_store_errors", "requests answered uncached because the cache store failed", registry=r
        )

        self.signals = Counter(
            "coe_signal_verdicts",
            "signal verdicts (signals: in experts.yaml) by what was done: block, route, redact, flag, none",
            ["signal", "verdict", "action"],
            registry=r,
        )

    def observe_answer(self, answer: Answer) -> None:
        trace = answer.trace
        self.observe_session(trace.session)
        self.observe_signals(trace.signals)
        if trace.cache is not None:
            cache = trace.cache
            result = f"refused_{cache.refused}" if cache.refused else cache.status
            self.cache.labels(result=result, match=cache.match or "none").inc()
            if trace.cache.error is not None:
                self.cache_errors.inc()
        for key, ms in trace.timings_ms.items():
            self.stage.labels(stage=key.split(":", 1)[0]).observe(ms / 1000)
        self.tokens.labels(expert=answer.expert, kind="prompt").inc(answer.usage.prompt_tokens)
        self.tokens.labels(expert=answer.expert, kind="completion").inc(answer.usage.completion_tokens)
        decision = trace.decision
        if decision is not None:
            self.decisions.labels(category=decision.category or "none").inc()
            if trace.fallback_used:
                self.fallbacks.labels(routed_to=decision.expert, answered_by=answer.expert).inc()

    def observe_session(self, session: SessionTrace | None) -> None:
        if session is None:
            return
        self.sessions.labels(action=session.action).inc()
        if session.error:
            self.session_errors.inc()

    def observe_signals(self, signals: SignalsTrace | None) -> None:
        for v in signals.verdicts if signals is not None else ():
            self.signals.labels(signal=v.signal, verdict=v.verdict, action=v.action).inc()

    def observe_blocked(self, signal: str, verdict: str) -> None:
        """A blocked request has no answer to observe; its verdict is counted here."""
        self.signals.labels(signal=signal, verdict=verdict, action="block").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests by endpoint and status, and their latency to the end of the body. ``known``:
    the paths counted under their own name (the route table's fixed paths); any other is ``other``,
    so a scan of random paths cannot grow the label set.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper re-streams every response
    through an extra task and costs milliseconds per request on a small machine."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known = frozenset(known)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler becomes a 500 in ServerErrorMiddleware

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.inflight.dec()
            endpoint = scope["path"] if scope["path"] in self.known else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


class _PoolCollector(Collector):
    """The pool's own counters, read at scrape time: loads (starts + wakes) and evictions are the
    swaps that make a composition slow, so they are what an operator watches."""

    _COUNTERS = (
        ("loads", "expert loads: process starts plus wakes from sleep"),
        ("evictions", "experts stopped or put to sleep to make room"),
        ("starts", "expert processes started"),
        ("wakes", "experts woken from sleep"),
        ("crashes", "expert processes found dead"),
    )

    def __init__(self, pool: ExpertPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        stats = self.pool.stats()
        for field, help_text in self._COUNTERS:
            family = CounterMetricFamily(f"coe_pool_{field}", help_text, labels=["expert"])
            for expert, count in getattr(stats, field).items():
                family.add_metric([expert], count)
            yield family
        yield GaugeMetricFamily("coe_pool_resident_gb", "memory held by loaded experts", stats.resident_gb)
        if stats.budget_gb is not None:
            yield GaugeMetricFamily("coe_pool_budget_gb", "serving.memory_budget_gb", stats.budget_gb)
