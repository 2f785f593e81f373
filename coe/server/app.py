"""The FastAPI app: routes, authentication, body limits and the CoE's lifetime.

Every route is a row of the one route table (coe/server/routes.py). Every generating route (chat
completions, responses, messages, completions) parses its body with its API's adapter
(coe/server/apis/) and runs through the one Gateway with a ``RequestContext`` made for the request
(its slot with each expert, its observed record), so routing, trace headers, limits,
fallbacks and metrics are the same for all; /v1/embeddings answers from the registry's encoder.

``create_app(config)`` builds a CoE and an ExpertLimiter whose slots each request enters around each
of its expert calls, checks at start-up that the strategy objects build (coe.pipeline.readiness; /readyz and
the generating routes answer 503 naming what failed), starts the router and the managed experts in
the background (so /readyz turns 200 once they are up), and stops every expert process it started
when the server shuts down, after in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from coe.config import CoEConfig
from coe.encoding.embedder import shared_embedder
from coe.experts.calls import Slot
from coe.orchestrator import CoE
from coe.server import dashboard
from coe.server.apis import count_tokens as tokens
from coe.server.apis import embeddings
from coe.server.apis import feedback as feedback_api
from coe.server.context import RequestContext
from coe.server.errors import APIError, install_error_handlers
from coe.server.gateway import ApiAdapter, Gateway, coe_headers, model_ids, session_ref
from coe.server.limits import ExpertLimiter
from coe.server.metrics import Metrics, MetricsMiddleware
from coe.server.observe import ObserveMiddleware, Recent, Sink
from coe.server.probes import Readiness, ready_body
from coe.server.routes import ADAPTERS, GENERATING, KNOWN, Handler, register
from coe.server.settings import ServerSettings, authorized

if TYPE_CHECKING:
    from coe.server.telemetry import Telemetry
    from coe.traces import Recorder

log = logging.getLogger("coe.server")


@dataclass
class _Parts:
    """What one app is made of; built once by ``create_app``, read by its handlers and lifespan."""

    config: CoEConfig
    settings: ServerSettings
    coe: CoE
    metrics: Metrics
    limiter: ExpertLimiter
    recorder: Recorder | None
    readiness: Readiness
    gateway: Gateway
    recent: Recent  # the dashboard's live view (coe/server/dashboard.py)
    telemetry: Telemetry | None
    exposure: str | None  # served open on purpose: said at start-up and by /readyz
    guard: Slot | None  # entered around each expert call before the limiter's slot (the Ray ingress)


def create_app(
    config: CoEConfig, settings: ServerSettings | None = None, guard: Slot | None = None
) -> FastAPI:
    """``guard``: entered around each expert call of every request, before the per-expert limit (the
    Ray ingress fails calls to an expert whose replicas are all lost here, so the fallback answers)."""
    parts = _parts(config, settings or ServerSettings(), guard)
    app = FastAPI(title="CoE", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(parts))
    app.state.coe = parts.coe
    app.state.metrics = parts.metrics
    app.state.limiter = parts.limiter
    app.state.recorder = parts.recorder
    app.state.feedback_taken = 0
    app.state.recent = parts.recent
    app.state.telemetry = parts.telemetry
    install_error_handlers(app)
    sinks: list[Sink] = [parts.recent] if parts.telemetry is None else [parts.recent, parts.telemetry]
    app.add_middleware(ObserveMiddleware, sinks=sinks, paths=GENERATING)
    app.add_middleware(MetricsMiddleware, metrics=parts.metrics, known=KNOWN)
    keys = parts.settings.api_keys
    register(
        app,
        {
            **{name: _generating(parts, adapter) for name, adapter in ADAPTERS.items()},
            **_api_handlers(parts, app),
            **_probe_handlers(parts),
            **dashboard.handlers(app, parts.coe, parts.limiter, parts.recent, keys),
        },
    )
    return app


def _parts(config: CoEConfig, settings: ServerSettings, guard: Slot | None) -> _Parts:
    coe = CoE(config, session_store="sqlite")  # a restart keeps the conversations
    metrics = Metrics(coe.pool)
    limiter = ExpertLimiter(
        _concurrency(config, settings),
        settings.max_queue,
        on_reject=lambda name: metrics.rejected.labels(expert=name).inc(),
        process_of=coe.pool.groups.host,
    )
    recorder = _recorder(coe, metrics)
    readiness = Readiness(coe)
    telemetry = None
    if config.telemetry.otlp_endpoint is not None:  # imports opentelemetry only when asked
        from coe.server.telemetry import Telemetry

        telemetry = Telemetry(config.telemetry)
    return _Parts(
        config=config,
        settings=settings,
        coe=coe,
        metrics=metrics,
        limiter=limiter,
        recorder=recorder,
        readiness=readiness,
        gateway=Gateway(coe, metrics, recorder, readiness),
        recent=Recent(settings.ui_recent),
        telemetry=telemetry,
        exposure=settings.exposure_warning(),
        guard=guard,
    )


def _lifespan(parts: _Parts) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if parts.exposure is not None:
            log.warning(parts.exposure)
        warm = asyncio.create_task(_warm(parts.coe, parts.readiness)) if parts.settings.warm else None
        try:
            yield
        finally:
            if warm is not None:
                warm.cancel()
                await asyncio.gather(warm, return_exceptions=True)
            await parts.coe.aclose()  # stops the llama-server processes this server started
            if parts.recorder is not None:
                await asyncio.to_thread(parts.recorder.close)  # writes what is still queued
            if parts.telemetry is not None:
                await asyncio.to_thread(parts.telemetry.shutdown)  # exports the spans still batched

    return lifespan


def _authorize(request: Request, settings: ServerSettings) -> None:
    """A bearer key, or Anthropic's ``x-api-key`` header."""
    headers = request.headers
    if not authorized(headers.get("authorization", ""), settings.api_keys, headers.get("x-api-key", "")):
        raise APIError(401, "missing or invalid API key", code="invalid_api_key")  # never echoes it


async def _body_of(request: Request, settings: ServerSettings) -> tuple[object, bool]:
    """(the parsed JSON body, whether the x-coe-trace header asks for the trace), once authorized."""
    _authorize(request, settings)
    raw = await _read_body(request, settings.max_body_bytes)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise APIError(400, "the request body is not valid JSON") from None
    return data, request.headers.get("x-coe-trace", "").lower() in ("1", "true", "yes")


def _generating(parts: _Parts, api: ApiAdapter) -> Handler:
    """The route of one generating API: its adapter parses, the gateway answers, it writes back."""
    settings, gateway = parts.settings, parts.gateway

    async def route(request: Request) -> Response:
        data, trace = await _body_of(request, settings)
        noted = api.headers(request.headers)
        call = api.parse(data, settings, trace)
        call.reply_headers = noted
        call.session = session_ref(request.headers.get("x-coe-session"), call.request)
        call.api = api.info.name
        ctx = RequestContext.of(request.scope, parts.limiter, parts.guard)
        if call.stream:
            return await gateway.stream(call, api, ctx)
        answer = await gateway.answer(call, ctx)
        headers = coe_headers(answer.expert, answer.trace.decision, answer.trace) | call.reply_headers
        reply = api.body(answer, call)
        gateway.record(reply.get("id"), call, answer, ctx)
        return JSONResponse(reply, headers=headers)

    return route


def _api_handlers(parts: _Parts, app: FastAPI) -> dict[str, Handler]:
    """/v1/embeddings, /v1/feedback, /v1/models and /v1/messages/count_tokens."""
    settings, config, recorder = parts.settings, parts.config, parts.recorder

    async def create_embeddings(request: Request) -> Response:
        data, _ = await _body_of(request, settings)
        body = embeddings.parse(data, settings)
        encoder = shared_embedder(config.embedder, config.base_dir)
        vectors = await asyncio.to_thread(encoder.encode, embeddings.texts_of(body))
        return JSONResponse(embeddings.reply(vectors, body))

    async def create_feedback(request: Request) -> Response:
        data, _ = await _body_of(request, settings)
        item = feedback_api.parse(data)
        if recorder is None:
            raise APIError(
                404, "the trace store is off (traces.enabled: false): no response can be graded",
                code="traces_disabled",
            )  # fmt: skip
        await asyncio.to_thread(feedback_api.store, recorder, item)
        app.state.feedback_taken += 1  # the dashboard's feedback panel recomputes
        return JSONResponse(feedback_api.reply(item))

    async def list_models(request: Request) -> Response:
        _authorize(request, settings)
        created = int(time.time())
        data = [
            {"id": mid, "object": "model", "created": created, "owned_by": "coe"}
            for mid in model_ids(parts.coe)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def count_tokens(request: Request) -> Response:
        data, _ = await _body_of(request, settings)
        return await tokens.reply(parts.gateway, data, settings, request.headers)

    return {
        "embeddings": create_embeddings,
        "feedback": create_feedback,
        "models": list_models,
        "count_tokens": count_tokens,
    }


def _probe_handlers(parts: _Parts) -> dict[str, Handler]:
    """/healthz (the process is up), /readyz (it can answer; coe/server/probes.py) and /metrics."""

    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz() -> Response:
        body, status = await ready_body(parts.coe, parts.readiness, parts.exposure)
        return JSONResponse(body, status_code=status)

    async def metrics_endpoint(request: Request) -> Response:
        _authorize(request, parts.settings)
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(parts.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return {"healthz": healthz, "readyz": readyz, "metrics": metrics_endpoint}


def _recorder(coe: CoE, metrics: Metrics) -> Recorder | None:
    """The trace store's recorder when ``traces.enabled``; its drops and writes go to the metrics."""
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


async def _warm(coe: CoE, readiness: Readiness) -> None:
    """Build the strategy objects and load what they load lazily (the router's encoders, the guard
    file, Presidio's recognizers: the readiness check does, and its failures are what /readyz
    names), then start managed experts now rather than on the first request."""
    try:
        for key, problem in (await readiness.check()).items():
            log.error("not ready: %s: %s", key, problem)
        loaded = set(await coe.pool.scheduler.warm())  # as many as the memory budget holds together
        # What start-up built (the encoder, the registry, imported modules) lives as long as the
        # server: out of the collector's sight, a full collection no longer walks it in the middle
        # of a request (the p99 stall at concurrency 1; docs/benchmarks/line_rate.md).
        gc.collect()
        gc.freeze()
        for name, expert in coe.config.experts.items():
            if expert.serve is not None and name not in loaded and (why := coe.pool.error(name)):
                log.warning("expert %s did not start: %s", name, why)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # readiness reports it; the server keeps serving what it can
        log.warning("warm-up failed: %s", exc)
