"""The FastAPI app: routes, authentication, body limits and the CoE's lifetime.

Every generating route (chat completions, responses, messages, completions) parses its body with its
API module (coe/server/apis/) and runs through the one Gateway, so routing, trace headers, limits,
fallbacks and metrics are the same for all; /v1/embeddings answers from the registry's encoder.

``create_app(config)`` builds a CoE whose per-expert calls pass through an ExpertLimiter, starts the
router and the managed experts in the background (so /readyz turns 200 once they are up), and stops
every expert process it started when the server shuts down, after in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.config import CoEConfig
from coe.encoding.embedder import shared_embedder
from coe.orchestrator import CoE
from coe.protocols import WarmRouter
from coe.server import dashboard
from coe.server.apis import chat, completions, embeddings, messages, responses
from coe.server.apis import feedback as feedback_api
from coe.server.errors import APIError, install_error_handlers
from coe.server.gateway import Call, Gateway, attempted, coe_headers, model_ids, session_ref
from coe.server.limits import ExpertLimiter
from coe.server.metrics import Metrics
from coe.server.observe import ObserveMiddleware, Recent, Sink
from coe.server.settings import ServerSettings, authorized

if TYPE_CHECKING:
    from coe.traces import Recorder

log = logging.getLogger("coe.server")


def create_app(config: CoEConfig, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    coe = CoE(config, session_store="sqlite")  # a restart keeps the conversations
    metrics = Metrics(coe.pool)
    limiter = ExpertLimiter(
        _concurrency(config, settings),
        settings.max_queue,
        on_reject=lambda name: metrics.rejected.labels(expert=name).inc(),
    )

    def admit(name: str) -> AbstractAsyncContextManager[None]:
        if (tried := attempted.get()) is not None:
            tried.append(name)
        return limiter.slot(name)

    coe.pipeline.calls.admission = admit
    recorder = _recorder(coe, metrics)
    gateway = Gateway(coe, metrics, recorder)
    recent = Recent(settings.ui_recent)  # the dashboard's live view (coe/server/dashboard.py)
    sinks: list[Sink] = [recent]
    telemetry = None
    if config.telemetry.otlp_endpoint is not None:  # imports opentelemetry only when asked
        from coe.server.telemetry import Telemetry

        telemetry = Telemetry(config.telemetry)
        sinks.append(telemetry)
    exposure = settings.exposure_warning()  # served open on purpose: said at start-up and by /readyz

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if exposure is not None:
            log.warning(exposure)
        warm = asyncio.create_task(_warm(coe)) if settings.warm else None
        try:
            yield
        finally:
            if warm is not None:
                warm.cancel()
                await asyncio.gather(warm, return_exceptions=True)
            await coe.aclose()  # stops the llama-server processes this server started
            if recorder is not None:
                await asyncio.to_thread(recorder.close)  # writes what is still queued
            if telemetry is not None:
                await asyncio.to_thread(telemetry.shutdown)  # exports the spans still batched

    app = FastAPI(title="CoE", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.coe = coe
    app.state.metrics = metrics
    app.state.limiter = limiter
    app.state.recorder = recorder
    app.state.feedback_taken = 0
    app.state.recent = recent
    app.state.telemetry = telemetry
    install_error_handlers(app)

    def authorize(request: Request) -> None:
        """A bearer key, or Anthropic's ``x-api-key`` header."""
        headers = request.headers
        if not authorized(headers.get("authorization", ""), settings.api_keys, headers.get("x-api-key", "")):
            raise APIError(401, "missing or invalid API key", code="invalid_api_key")  # never echoes it

    app.add_middleware(ObserveMiddleware, sinks=sinks)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    async def body_of(request: Request) -> tuple[object, bool]:
        """(the parsed JSON body, whether the x-coe-trace header asks for the trace)."""
        authorize(request)
        raw = await _read_body(request, settings.max_body_bytes)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise APIError(400, "the request body is not valid JSON") from None
        return data, request.headers.get("x-coe-trace", "").lower() in ("1", "true", "yes")

    def generating(api: ModuleType) -> Callable[[Request], Awaitable[Response]]:
        """The route of one generating API: its module parses, the gateway answers, it writes back."""

        async def route(request: Request) -> Response:
            data, trace = await body_of(request)
            call: Call = api.parse(data, settings, trace)
            call.session = session_ref(request.headers.get("x-coe-session"), call.request)
            call.api = api.API.name
            if call.stream:
                return await gateway.stream(call, lambda expert: api.Writer(call, expert))
            answer = await gateway.answer(call)
            headers = coe_headers(answer.expert, answer.trace.decision, answer.trace)
            reply = api.body(answer, call)
            gateway.record(reply.get("id"), call, answer)
            return JSONResponse(reply, headers=headers)

        return route

    for api in (chat, responses, messages, completions):
        app.add_api_route(api.API.path, generating(api), methods=["POST"], name=api.API.name)

    @app.post("/v1/embeddings")
    async def create_embeddings(request: Request) -> Response:
        data, _ = await body_of(request)
        body = embeddings.parse(data, settings)
        encoder = shared_embedder(config.embedder, config.base_dir)
        vectors = await asyncio.to_thread(encoder.encode, embeddings.texts_of(body))
        return JSONResponse(embeddings.reply(vectors, body))

    @app.post("/v1/feedback")
    async def create_feedback(request: Request) -> JSONResponse:
        data, _ = await body_of(request)
        item = feedback_api.parse(data)
        if recorder is None:
            raise APIError(
                404, "the trace store is off (traces.enabled: false): no response can be graded",
                code="traces_disabled",
            )  # fmt: skip
        await asyncio.to_thread(feedback_api.store, recorder, item)
        app.state.feedback_taken += 1  # the dashboard's feedback panel recomputes
        return JSONResponse(feedback_api.reply(item))

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        authorize(request)
        created = int(time.time())
        data = [
            {"id": mid, "object": "model", "created": created, "owned_by": "coe"} for mid in model_ids(coe)
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # Under a memory budget an evicted (cold) or sleeping expert is loadable on demand, not down,
        # unless it failed to start or is larger than the whole budget.
        loadable = {"ready", "asleep", "cold"} if coe.pool.budget.gb is not None else {"ready"}
        not_ready = {}
        for s in await coe.pool.status():
            if s.state in ("cold", "asleep") and s.state in loadable and not s.detail:
                why: str | None = await asyncio.to_thread(coe.pool.budget.never_fits, s.name)
                s.detail = why or ""
            ready = (s.state in loadable and not (s.state in ("cold", "asleep") and s.detail)) or (
                s.state == "external" and s.detail in ("reachable", "hosted")
            )
            if not ready:
                not_ready[s.name] = s.detail or s.state
        open_api = {"unauthenticated": True, "warning": exposure} if exposure else {}
        if not_ready:
            body = {"status": "not ready", "not_ready": not_ready, **open_api}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", **open_api})

    dashboard.install(app, coe, limiter, recent, settings.api_keys)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        authorize(request)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


class _MetricsMiddleware:
    """Counts requests by endpoint and status, and their latency to the end of the body.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper re-streams every response
    through an extra task and costs milliseconds per request on a small machine."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
            endpoint = scope["path"] if scope["path"] in _KNOWN else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)


_KNOWN = {
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/feedback",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ui",
    "/ui/api/summary",
    "/ui/api/recent",
}


def _recorder(coe: CoE, metrics: Metrics) -> Recorder | None:
    """The trace store's writer when ``traces.enabled``; its drops and writes go to the metrics."""
    if not coe.config.traces.enabled:
        return None
    from coe.traces import Recorder

    return Recorder(
        coe.config,
        coe.pool.state_dir,
        on_drop=lambda reason, n: metrics.trace_dropped.labels(reason=reason).inc(n),
        on_write=metrics.trace_records.inc,
    )


def _concurrency(config: CoEConfig, settings: ServerSettings) -> dict[str, int]:
    """Per expert: the flag if given, else the expert's slots (``ExpertConfig.slots``)."""
    return {name: settings.max_concurrency or expert.slots for name, expert in config.experts.items()}


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; a lying or absent Content-Length cannot get past it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _warm(coe: CoE) -> None:
    """Load the router's encoder and start managed experts now rather than on the first request."""
    try:
        router = await asyncio.to_thread(lambda: coe.router)
        if isinstance(router, WarmRouter):  # a trained artefact loads its encoders on first use
            await asyncio.to_thread(router.warm)
        if coe.signals is not None:  # the guard file, its encoder and Presidio's recognizers
            await asyncio.to_thread(coe.signals.warm)
        loaded = set(await coe.pool.scheduler.warm())  # as many as the memory budget holds together
        for name, expert in coe.config.experts.items():
            if expert.serve is not None and name not in loaded and (why := coe.pool.error(name)):
                log.warning("expert %s did not start: %s", name, why)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # readiness reports it; the server keeps serving what it can
        log.warning("warm-up failed: %s", exc)
