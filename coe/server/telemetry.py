"""OpenTelemetry spans of ``coe serve``: one span per generating request, a child per stage.

Built from the finished request (``coe.server.observe.Observed``) with explicit start and end times,
not by instrumenting the request path: the orchestrator already measures every stage into the Trace
(``timings_ms``, ``attempts``), so the request path never touches OpenTelemetry, a server without a
``telemetry`` block never imports it, and export cost is a batch in the SDK's own thread. The price:
a child's start is laid out from the stage durations in the order the orchestrator runs them
(signals, session, route, cache, retrieve, start, each expert attempt, aggregate) from the request's start,
rather than read from a clock at the time; their durations are the measured ones. Experts recruited
together (fan-out) run concurrently, so their attempt spans share one start.

Names and attributes follow the OpenTelemetry GenAI semantic conventions where they apply: the
request span is ``{gen_ai.operation.name} {gen_ai.request.model}`` (e.g. ``chat coe``) of kind
SERVER; each expert attempt is a CLIENT span ``chat EXPERT`` with ``gen_ai.request.model``;
``gen_ai.response.model``, ``gen_ai.response.id`` and ``gen_ai.usage.input_tokens`` /
``output_tokens`` sit on the request span and the answering attempt. CoE's own decision travels as
``coe.router``, ``coe.category``, ``coe.confidence``, ``coe.expert``, ``coe.fallback`` (another
candidate answered) and ``coe.decision.fallback`` (the router fell back). An incoming W3C
``traceparent`` makes the request span a child of the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coe.server.observe import Observed

if TYPE_CHECKING:
    from coe.config.telemetry import TelemetryConfig
    from coe.types import Trace

OPERATIONS = {"/v1/completions": "text_completion"}  # every other generating API is a chat
_STAGES = ("route", "cache", "retrieve")


class Telemetry:
    """The exporter of one server; ``__call__`` is an observe sink. Imports opentelemetry here."""

    def __init__(self, cfg: TelemetryConfig) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:  # the extra is missing: say what to install
            raise RuntimeError(
                f"telemetry.otlp_endpoint is set but OpenTelemetry is not installed ({exc.name}): "
                "pip install 'coe[telemetry]'"
            ) from None
        assert cfg.otlp_endpoint is not None
        resource = Resource.create({**cfg.resource, "service.name": cfg.service_name})
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio))
        )
        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=cfg.headers, timeout=cfg.timeout_s)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))  # the SDK default: a batch every 5 s
        self.tracer = self.provider.get_tracer("coe.server")

    def __call__(self, seen: Observed) -> None:
        from opentelemetry import trace as otel
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(seen.headers)
        operation = OPERATIONS.get(seen.path, "chat")
        asked = seen.model or "coe"
        root = self.tracer.start_span(
            f"{operation} {asked}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=seen.started_ns,
            attributes=_request_attributes(seen, operation, asked),
        )
        if seen.status >= 400:
            root.set_status(Status(StatusCode.ERROR, seen.error or f"HTTP {seen.status}"))
        inside = otel.set_span_in_context(root)
        if seen.trace is not None:
            for name, start, end, attrs, error in _stages(seen, seen.trace):
                kind = SpanKind.CLIENT if "coe.attempt" in attrs else SpanKind.INTERNAL
                span = self.tracer.start_span(
                    name, context=inside, kind=kind, start_time=start, attributes=attrs
                )
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error))
                span.end(end_time=min(end, seen.ended_ns))
        root.end(end_time=seen.ended_ns)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _request_attributes(seen: Observed, operation: str, asked: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "coe",
        "gen_ai.request.model": asked,
        "http.request.method": "POST",
        "http.route": seen.path,
        "http.response.status_code": seen.status,
        "coe.stream": seen.stream,
    }
    if seen.id is not None:
        attrs["gen_ai.response.id"] = seen.id
    if seen.error is not None:
        attrs["error.type"] = seen.error[:200]
    answer, trace = seen.answer, seen.trace
    if answer is not None:
        attrs["gen_ai.response.model"] = f"coe/expert/{answer.expert}"
        attrs["gen_ai.usage.input_tokens"] = answer.usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = answer.usage.completion_tokens
        attrs["coe.expert"] = answer.expert
        if answer.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = [answer.finish_reason]
    if trace is not None:
        attrs["coe.fallback"] = trace.fallback_used
        if (d := trace.decision) is not None:
            attrs["coe.router"] = d.router
            attrs["coe.decision.fallback"] = d.fallback
            attrs["coe.candidates"] = list(d.experts)
            if d.category is not None:
                attrs["coe.category"] = d.category
            if d.confidence is not None:
                attrs["coe.confidence"] = float(d.confidence)
        if trace.cache is not None:
            attrs["coe.cache.status"] = trace.cache.status
        if trace.signals is not None and trace.signals.blocked_by is not None:
            attrs["coe.signals.blocked_by"] = trace.signals.blocked_by
        if trace.session is not None and trace.session.id:
            attrs["coe.session.action"] = trace.session.action
    return attrs


Stage = tuple[str, int, int, dict[str, Any], str | None]


def _stages(seen: Observed, trace: Trace) -> list[Stage]:
    """(name, start ns, end ns, attributes, error) per stage, laid out from the request's start."""
    ms = trace.timings_ms
    cursor = seen.started_ns
    out: list[Stage] = []

    def lay(
        name: str, dur_ms: float, attrs: dict[str, Any], error: str | None = None, advance: bool = True
    ) -> int:
        nonlocal cursor
        start = cursor
        end = start + int(dur_ms * 1e6)
        out.append((name, start, end, attrs, error))
        if advance:
            cursor = end
        return end

    if "signals" in ms and trace.signals is not None:  # the guard and PII checks run first
        sig = trace.signals
        checks: dict[str, Any] = {
            "coe.signals.verdicts": [f"{v.signal} {v.verdict}: {v.action}" for v in sig.verdicts]
        }
        if sig.blocked_by is not None:
            checks["coe.signals.blocked_by"] = sig.blocked_by
        lay("coe.signals", ms["signals"], checks)
    if trace.session is not None and trace.session.lookup_ms:
        lay("coe.session", trace.session.lookup_ms, {"coe.session.action": trace.session.action})
    decision = trace.decision
    for stage in _STAGES:
        if stage not in ms:
            continue
        attrs: dict[str, Any] = {}
        if stage == "route" and decision is not None:
            attrs = {"coe.router": decision.router, "coe.decision.fallback": decision.fallback}
            if decision.category is not None:
                attrs["coe.category"] = decision.category
            if decision.confidence is not None:
                attrs["coe.confidence"] = float(decision.confidence)
        elif stage == "cache" and trace.cache is not None:
            attrs = {"coe.cache.status": trace.cache.status}
        elif stage == "retrieve" and trace.retrieval is not None:
            attrs = {
                "coe.retrieval.retrieve": trace.retrieval.retrieve,
                "coe.retrieval.gate": trace.retrieval.gate,
            }
        lay(f"coe.{stage}", ms[stage], attrs)
    fanout = decision.fanout if decision is not None else 1
    answering = seen.answer.expert if seen.answer is not None else None
    together = cursor
    latest = cursor
    for i, attempt in enumerate(trace.attempts):
        parallel = fanout > 1 and i < fanout
        if parallel:
            cursor = together
        if (start_ms := ms.get(f"start:{attempt.expert}")) is not None and i < max(1, fanout):
            lay("coe.start", start_ms, {"coe.expert": attempt.expert}, advance=False)  # within the attempt
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": f"coe/expert/{attempt.expert}",
            "coe.expert": attempt.expert,
            "coe.attempt": i + 1,
            "coe.attempt.ok": attempt.ok,
        }
        if attempt.ok and attempt.expert == answering and seen.answer is not None:
            if seen.answer.model:
                attrs["gen_ai.response.model"] = seen.answer.model
            attrs["gen_ai.usage.input_tokens"] = seen.answer.usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = seen.answer.usage.completion_tokens
        if attempt.error is not None:
            attrs["error.type"] = attempt.error[:200]
        end = lay(f"chat {attempt.expert}", attempt.latency_ms, attrs, attempt.error, advance=not parallel)
        latest = max(latest, end)
    cursor = max(cursor, latest)
    if "aggregate" in ms:
        agg = trace.aggregation.aggregator if trace.aggregation is not None else None
        lay("coe.aggregate", ms["aggregate"], {"coe.aggregator": agg} if agg else {})
    return out
