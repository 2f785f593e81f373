"""What the live dashboard and OpenTelemetry see of each generating request, off the request path.

An ASGI middleware opens an ``Observed`` per generating request and puts it in the request's ASGI
scope; the route hands it down in the request's context (coe.server.context.RequestContext), and the
gateway notes the answer (or the failure, with the trace filled in so far) and the response id into
it; once the last byte of the body is sent (a stream included) the middleware hands the finished
``Observed`` to its sinks: the in-process ring buffer (``Recent``, read by /ui/api/*) and, when
``telemetry.otlp_endpoint`` is set, the span exporter. Why after the answer and not during it: the
orchestrator already times every stage into the Trace, so neither the dashboard nor OpenTelemetry
needs hooks inside routing or expert calls, and a slow or broken sink cannot slow a request (the
span exporter batches in a thread of its own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.types import Answer, Trace

log = logging.getLogger("coe.server")
SCOPE_KEY = "coe.observed"  # where the middleware leaves the Observed in the ASGI scope


@dataclass
class Observed:
    """One generating request as it finished: its wall-clock span, its answer or failure, its trace."""

    path: str
    started_ns: int  # unix time, ns (what OpenTelemetry spans carry)
    headers: dict[str, str] = field(default_factory=dict)  # traceparent / tracestate only
    ended_ns: int = 0
    status: int = 0
    id: str | None = None  # the response id the client got (chatcmpl-..., resp_..., msg_...)
    model: str | None = None  # the model id asked for
    stream: bool = False
    answer: Answer | None = None
    trace: Trace | None = None
    error: str | None = None
    code: str | None = None  # a refusal's error code (model_not_found, unknown_parameter...)

    @property
    def duration_ms(self) -> float:
        return round((self.ended_ns - self.started_ns) / 1e6, 2)

    @property
    def expert(self) -> str | None:
        return self.answer.expert if self.answer is not None else None

    def note(
        self,
        *,
        model: str | None = None,
        stream: bool | None = None,
        answer: Answer | None = None,
        trace: Trace | None = None,
        error: str | None = None,
        rid: object = None,
    ) -> None:
        """Fill in what the gateway learnt; a trace noted before the answer is what a failure shows."""
        if model is not None:
            self.model = model
        if stream is not None:
            self.stream = stream
        if answer is not None:
            self.answer, self.trace = answer, answer.trace
        if trace is not None and self.trace is None:
            self.trace = trace
        if error is not None:
            self.error = error
        if isinstance(rid, str):
            self.id = rid


Sink = Callable[[Observed], None]


def observed_in(scope: Scope) -> Observed:
    """The request's Observed as the middleware left it, else a detached one that nobody reads (a
    path the middleware does not watch, an app without sinks)."""
    seen = scope.get(SCOPE_KEY)
    return seen if isinstance(seen, Observed) else Observed(path=scope["path"], started_ns=time.time_ns())


class ObserveMiddleware:
    """Plain ASGI (like the metrics middleware): one Observed per request to ``paths`` (the generating
    routes of coe.server.routes), to the sinks when the body is done. A sink that raises is logged and
    skipped, never the request's problem."""

    def __init__(self, app: ASGIApp, sinks: Iterable[Sink], paths: Collection[str]) -> None:
        self.app = app
        self.sinks = list(sinks)
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or not self.sinks:
            await self.app(scope, receive, send)
            return
        wanted = {b"traceparent", b"tracestate"}
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}
        seen = Observed(path=scope["path"], started_ns=time.time_ns(), headers=headers, status=500)

        body = bytearray()  # the request's head, for the model a refused request asked for

        async def keep_head() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _HEAD_BYTES:
                body.extend(message.get("body", b"")[: _HEAD_BYTES - len(body)])
            return message

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
            elif message["type"] == "http.response.body" and seen.status >= 400 and seen.code is None:
                seen.code, said = _error_of(message.get("body", b""))
                seen.error = seen.error or said
            await send(message)

        scope[SCOPE_KEY] = seen
        try:
            await self.app(scope, keep_head, send_status)
        finally:
            if seen.model is None and seen.status >= 400:  # refused before the gateway noted it
                seen.model = _model_asked(bytes(body))
            seen.ended_ns = time.time_ns()
            if seen.id is None:  # refused before a reply id existed: still one row to click
                seen.id = f"req_{uuid.uuid4().hex[:24]}"
            for sink in self.sinks:
                try:
                    sink(seen)
                except Exception:  # a sink's bug must not fail the request it observed
                    log.exception("observer sink %r failed", sink)


_HEAD_BYTES = 64 * 1024


def _model_asked(body: bytes) -> str | None:
    """The ``model`` of a JSON request body, if it can be read."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            return str(data["model"])[:200]
    return None


def _error_of(body: bytes) -> tuple[str, str | None]:
    """The code and message of an error body in any API's shape (OpenAI's ``error.code``, else
    ``error.type``)."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = error.get("message")
            return str(error.get("code") or error.get("type") or ""), message if isinstance(
                message, str
            ) else None
    return "", None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Recent:
    """The live view: the last ``size`` requests whole, and counters since the server started.

    In memory on purpose: it is what the dashboard polls every second, and it must work with the
    trace store off (the store, coe.traces, is the durable record)."""

    def __init__(self, size: int = 500) -> None:
        self.size = size
        self._items: deque[Observed] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.started = time.time()
        self.total = 0
        self.failed = 0
        self.categories: Counter[str] = Counter()
        self.answered_by: Counter[str] = Counter()
        self.fallbacks = 0
        self.cache: Counter[str] = Counter()
        self.signals: Counter[str] = Counter()  # 'guard jailbreak: block' -> requests
        self.attempts: Counter[str] = Counter()
        self.attempt_errors: Counter[str] = Counter()

    def __call__(self, seen: Observed) -> None:
        with self._lock:
            self._items.append(seen)
            self.total += 1
            self.failed += seen.status >= 400
            trace = seen.trace
            if seen.answer is not None:
                self.answered_by[seen.answer.expert] += 1
            if trace is None:
                return
            if trace.decision is not None:
                self.categories[trace.decision.category or "none"] += 1
            self.fallbacks += trace.fallback_used
            if trace.cache is not None:
                self.cache[trace.cache.status] += 1
            for v in trace.signals.verdicts if trace.signals is not None else ():  # guard, PII
                self.signals[f"{v.signal} {v.verdict}: {v.action}"] += 1
            for a in trace.attempts:
                self.attempts[a.expert] += 1
                self.attempt_errors[a.expert] += not a.ok

    def items(self) -> list[Observed]:
        with self._lock:
            return list(self._items)

    def get(self, rid: str) -> Observed | None:
        return next((s for s in reversed(self.items()) if s.id == rid), None)

    def rate(self, window_s: float = 10.0, now: float | None = None) -> float:
        """Requests per second finished in the last ``window_s`` (shorter right after start)."""
        now = time.time() if now is None else now
        since = now - window_s
        n = sum(1 for s in self.items() if s.ended_ns / 1e9 >= since)
        return round(n / max(1e-9, min(window_s, now - self.started)), 3)

    def stage_latency(self) -> dict[str, dict[str, float]]:
        """p50/p95/mean per stage (signals, route, cache, retrieve, start, expert, aggregate, total) over
        the ring, from the orchestrator's own timings."""
        by_stage: dict[str, list[float]] = {}
        for s in self.items():
            if s.trace is not None:
                for key, ms in s.trace.timings_ms.items():
                    by_stage.setdefault(key.split(":", 1)[0], []).append(ms)
        return {
            stage: {
                "count": len(v),
                "p50_ms": _percentile(v, 0.5),
                "p95_ms": _percentile(v, 0.95),
                "mean_ms": round(sum(v) / len(v), 2),
            }
            for stage, v in sorted(by_stage.items())
        }
