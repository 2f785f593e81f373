"""The one request path behind every API: resolve the model id, answer (or stream) through CoE, map
failures to status codes, count metrics, and name the answering expert in the ``x-coe-*`` headers.
Each API (coe/server/apis/) is an ``ApiAdapter`` that only translates its wire shape to an ``ApiRequest``
and an ``Answer`` (or ``StreamEvent``s) back to its wire shape, so routing, limits, fallbacks and
metrics are the same for all of them. Each request comes with its ``RequestContext``
(coe/server/context.py): its slot into the experts' slots and its observed record.

Model ids: ``coe`` routes; ``coe/expert/NAME`` pins an expert; ``coe/category/NAME`` answers as if
the router had chosen that category (its expert, then the fallback expert). A reply's model is
``coe/expert/NAME`` of the expert that answered.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fastapi.responses import StreamingResponse

from coe.errors import AllExpertsFailed, CoEError, ExpertError, NoCapableExpert, RequestBlocked
from coe.orchestrator import CoE
from coe.server.apis.policy import Api
from coe.server.apis.translate import check_tool_results
from coe.server.context import RequestContext
from coe.server.errors import APIError, log
from coe.server.limits import ExpertBusy
from coe.server.metrics import Metrics
from coe.server.observe import Observed
from coe.server.probes import Readiness
from coe.server.settings import ServerSettings
from coe.sessions.store import StoredResponse, StoreUnavailable
from coe.types import Answer, Message, Request, RouteDecision, SessionRef, StreamEvent, Trace

if TYPE_CHECKING:
    from coe.traces import Recorder

ROUTED = "coe"
EXPERT_PREFIX = "coe/expert/"
CATEGORY_PREFIX = "coe/category/"
EMBEDDER = "coe/embedder"


@dataclass
class ApiRequest:
    """One request in CoE's terms, whichever API it came through."""

    request: Request
    model: str
    stream: bool = False
    include_usage: bool = False
    trace: bool = False
    session: SessionRef | None = None
    api: str | None = None  # the API's name, for the trace store
    # A reply that can be continued later (the Responses API's ``store``): its id, made before the
    # answer so that the stored record and the reply carry the same one.
    response_id: str | None = None
    store: bool = False
    previous_response_id: str | None = None  # the stored reply this request continues
    reply_headers: dict[str, str] = field(default_factory=dict)  # the adapter's (``ApiAdapter.headers``)
    # The generation settings the answering expert applied (the request's over its defaults).
    generation: dict[str, Any] = field(default_factory=dict)
    # A CoE field name -> the name this API gave it (Anthropic's ``thinking`` for reasoning_effort),
    # so a refusal names the field the caller wrote.
    aliases: dict[str, str] = field(default_factory=dict)


class SseFormat(Protocol):
    """One streamed reply in one API's event format; ``id`` is the response id it sends."""

    id: str

    def start(self) -> list[bytes]: ...

    def delta(self, event: StreamEvent) -> list[bytes]: ...

    def done(self, answer: Answer) -> list[bytes]: ...

    def error(self, message: str) -> list[bytes]: ...


class ApiAdapter(Protocol):
    """One generating API (coe/server/apis/): its body to an ``ApiRequest``, then the ``Answer`` to its reply
    (``body``) or the stream to its events (``sse``). The route table (coe/server/routes.py) routes
    each through the one Gateway."""

    @property
    def info(self) -> Api:
        """Its field table, name, method and path (coe/server/apis/policy.py)."""
        ...

    def parse(self, data: Any, settings: ServerSettings, trace_header: bool) -> ApiRequest: ...

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The request's headers checked (a 400 names one it refuses); what the reply adds about them."""
        ...

    def body(self, answer: Answer, call: ApiRequest) -> dict[str, Any]: ...

    def sse(self, call: ApiRequest, expert: str) -> SseFormat: ...


def model_ids(coe: CoE) -> list[str]:
    cfg = coe.config
    return (
        [ROUTED]
        + [EXPERT_PREFIX + name for name in cfg.experts]
        + [CATEGORY_PREFIX + name for name in cfg.router.category_routes()]
        + [EMBEDDER]
    )


def resolve_model(coe: CoE, model: str) -> tuple[str | None, RouteDecision | None]:
    """(pinned expert, pre-made decision) for a model id; 404 when unknown."""
    cfg = coe.config
    if model == ROUTED:
        return None, None
    if model.startswith(EXPERT_PREFIX) and model[len(EXPERT_PREFIX) :] in cfg.experts:
        return model[len(EXPERT_PREFIX) :], None
    routes = cfg.router.category_routes()
    if model.startswith(CATEGORY_PREFIX) and (category := model[len(CATEGORY_PREFIX) :]) in routes:
        expert = routes[category].expert
        experts = [expert]
        fallback = cfg.router.fallback_expert()
        if fallback is not None and fallback != expert:
            experts.append(fallback)
        decision = RouteDecision(
            router="category-pinned",
            experts=experts,
            category=category,
            confidence=1.0,
            reason=f"category {category!r} chosen by the caller (model {model}) maps to expert {expert!r}",
        )
        return None, decision
    hint = f"; {EMBEDDER} is for /v1/embeddings" if model == EMBEDDER else ""
    near = difflib.get_close_matches(model, [m for m in model_ids(coe) if m != EMBEDDER], n=3, cutoff=0.6)
    suggest = f"; did you mean {', '.join(repr(m) for m in near)}?" if near and not hint else ""
    raise APIError(
        404,
        f"the model {model!r} does not exist{suggest}; see GET /v1/models{hint}",
        param="model",
        code="model_not_found",
    )


def session_ref(header: str | None, request: Request) -> SessionRef | None:
    """The session a request names: the ``x-coe-session`` header, else ``metadata.session_id``."""
    metadata = request.params.get("metadata")
    if header:
        return SessionRef(id=header[:256], source="header")
    if isinstance(metadata, dict) and isinstance(metadata.get("session_id"), str) and metadata["session_id"]:
        return SessionRef(id=metadata["session_id"][:256], source="metadata")
    return None


def coe_headers(
    answer_expert: str, decision: RouteDecision | None, trace: Trace | None = None
) -> dict[str, str]:
    headers = {"x-coe-expert": answer_expert}
    if decision is not None and decision.category is not None:
        headers["x-coe-category"] = decision.category
    if decision is not None and decision.confidence is not None:
        headers["x-coe-confidence"] = f"{decision.confidence:.4f}"
    if trace is not None and trace.session is not None and trace.session.id:
        headers["x-coe-session"] = trace.session.id
    if trace is not None and trace.cache is not None:
        headers.update(cache_headers(trace))
    return headers


def cache_headers(trace: Trace) -> dict[str, str]:
    """``x-coe-cache: hit|miss`` (skip: not cacheable; error: the store failed, answered uncached),
    with the matched entry and its similarity on a hit."""
    cache = trace.cache
    assert cache is not None
    headers: dict[str, str] = {"x-coe-cache": cache.status}
    if cache.status == "hit":
        headers["x-coe-cache-match"] = cache.match or ""
        headers["x-coe-cache-entry"] = cache.entry or ""
        if cache.similarity is not None:
            headers["x-coe-cache-similarity"] = f"{cache.similarity:.4f}"
    return headers


def finish_reason(answer: Answer, max_tokens: object) -> str:
    """OpenAI's: the expert's own when it gave one, else "length" when the budget was used up."""
    if answer.tool_calls:
        return "tool_calls"
    if answer.finish_reason in ("stop", "length", "content_filter"):
        return answer.finish_reason
    limit = max_tokens if isinstance(max_tokens, int) else None
    return "length" if limit is not None and answer.usage.completion_tokens >= limit else "stop"


def error_for(exc: Exception, aliases: Mapping[str, str] | None = None) -> APIError:
    """Map CoE failures before the first byte to status codes; never leak a traceback. ``aliases``:
    the API's names of CoE's fields (ApiRequest.aliases)."""
    if isinstance(exc, ExpertBusy):
        return APIError(429, str(exc), code="expert_busy", headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, NoCapableExpert):
        param, message = exc.param, str(exc)
        if aliases and param is not None and param in aliases:
            param, message = aliases[param], message.replace(f"(for {param})", f"(for {aliases[param]})")
        return APIError(400, message, param=param, code="no_capable_expert")
    if isinstance(exc, RequestBlocked):  # a signal's verdict (signals: in experts.yaml); no expert called
        return APIError(400, str(exc), param="messages", code=exc.code)
    if isinstance(exc, AllExpertsFailed) and exc.bad and exc.bad == set(exc.errors):
        log.warning("%s", exc)  # every one answered, with a reply that cannot be read: a bad gateway
        return APIError(502, str(exc), code="bad_expert_reply", type="api_error")
    if isinstance(exc, AllExpertsFailed):
        log.warning("%s", exc)
        return APIError(
            503, str(exc), code="all_experts_failed", type="api_error", headers={"Retry-After": "1"}
        )
    if isinstance(exc, ExpertError):
        return APIError(503, str(exc), code="expert_failed", type="api_error", headers={"Retry-After": "1"})
    if isinstance(exc, APIError):
        return exc
    log.error("request failed: %s", type(exc).__name__, exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


class Gateway:
    def __init__(
        self, coe: CoE, metrics: Metrics, recorder: Recorder | None = None, readiness: Readiness | None = None
    ) -> None:
        self.coe = coe
        self.metrics = metrics
        self.recorder = recorder
        self.readiness = readiness or Readiness(coe)

    def record(self, rid: object, call: ApiRequest, answer: Answer, ctx: RequestContext) -> None:
        """The response id the client got, for the live view and telemetry, and the answer handed to
        the trace store under it (non-blocking)."""
        ctx.observed.note(rid=rid)
        if self.recorder is not None and isinstance(rid, str):
            self.recorder.record(rid, call.request, answer, model=call.model, api=call.api)

    async def _prepare(
        self, call: ApiRequest, ctx: RequestContext, stream: bool, trace: Trace
    ) -> dict[str, Any]:
        """The model id resolved, readiness held to, the stored conversation resumed: the keywords
        ``CoE.aask`` / ``astream`` take for this request."""
        ctx.observed.note(model=call.model, stream=stream)
        expert, decision = resolve_model(self.coe, call.model)
        try:
            await self.readiness.require(routed=expert is None and decision is None)
        except APIError as err:
            ctx.observed.note(error=err.message)
            raise
        await self._resume(call)
        return {
            "expert": expert,
            "decision": decision,
            "session": call.session,
            "trace": trace,
            "slot": ctx.slot,
        }

    async def answer(self, call: ApiRequest, ctx: RequestContext) -> Answer:
        trace = Trace()  # filled in as it goes: the dashboard and telemetry see a failure's stages too
        asked = await self._prepare(call, ctx, False, trace)
        try:
            answer = await self.coe.aask(call.request, **asked)
        except Exception as exc:
            self._count_blocked(exc)
            err = error_for(exc, call.aliases)
            ctx.observed.note(trace=trace, error=str(err.message))
            raise err from None
        self.metrics.observe_answer(answer)
        ctx.observed.note(answer=answer)
        call.generation = self.coe.pipeline.calls.settings(answer.expert, call.request)
        await self._remember(call, answer)
        return answer

    def _count_blocked(self, exc: Exception) -> None:
        if isinstance(exc, RequestBlocked):
            self.metrics.observe_blocked(exc.signal, exc.verdict)

    async def _resume(self, call: ApiRequest) -> None:
        """Put the stored conversation of ``previous_response_id`` before the request's own turns (its
        system turns stay first, as OpenAI does not carry instructions over), in the same session."""
        if not call.store and call.previous_response_id is None:
            return
        sessions = await self.coe.parts.asessions()
        call.store = call.store and sessions is not None  # the reply says whether it was kept
        if call.previous_response_id is None:
            return
        name = call.previous_response_id
        if sessions is None:
            raise APIError(
                400,
                "previous_response_id needs conversations on (router.sessions.enabled: true)",
                param="previous_response_id",
            )
        try:
            stored = await sessions.recall_response(name)
        except StoreUnavailable as exc:
            raise APIError(503, f"the session store is unavailable: {exc}", type="api_error") from None
        if stored is None:
            raise APIError(
                400,
                f"previous response {name!r} not found: it expired, was stored with store: false,"
                " or never existed",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        own = call.request.messages
        system = [m for m in own if m.role in ("system", "developer")]
        earlier = [Message.model_validate(m) for m in stored.messages]
        rest = [m for m in own if m.role not in ("system", "developer")]
        check_tool_results([*earlier, *rest], "input")  # offsets count the stored turns first
        call.request = call.request.model_copy(update={"messages": [*system, *earlier, *rest]})
        if call.session is None and stored.session:
            call.session = SessionRef(id=stored.session, source="previous_response_id")

    async def _remember(self, call: ApiRequest, answer: Answer) -> None:
        if not (call.store and call.response_id) or self.coe.sessions is None:
            return
        said = Message(role="assistant", content=answer.text or None, tool_calls=answer.tool_calls or None)
        stage = self.coe.signals  # keep the turns as the expert saw them: PII redacted, never the values
        request = await asyncio.to_thread(stage.redacted, call.request) if stage is not None else call.request
        turns = [m.payload() for m in request.messages if m.role not in ("system", "developer")]
        session = answer.trace.session.id if answer.trace.session is not None else None
        record = StoredResponse(id=call.response_id, session=session, messages=[*turns, said.payload()])
        await self.coe.sessions.remember_response(record)

    async def stream(self, call: ApiRequest, api: ApiAdapter, ctx: RequestContext) -> StreamingResponse:
        """Wait for the first event before answering, so that 429, 400 no_capable_expert and "every
        expert failed" still get a status code; after it, failures go in-band (``SseFormat.error``).
        ``astream`` fills the trace as it goes: routing and the session are decided before its first
        event, so the headers carry the category, confidence and session."""
        trace = Trace()
        asked = await self._prepare(call, ctx, True, trace)
        ctx.observed.note(trace=trace)
        try:
            events = self.coe.astream(call.request, **asked)
            first = await anext(events)
        except Exception as exc:
            self._count_blocked(exc)
            err = error_for(exc, call.aliases)
            ctx.observed.note(error=str(err.message))
            raise err from None
        tried = ctx.tried
        answering = first.answer.expert if first.answer is not None else (tried[-1] if tried else "unknown")
        headers = coe_headers(answering, trace.decision or asked["decision"], trace)
        call.generation = self.coe.pipeline.calls.settings(answering, call.request)
        sse_format = api.sse(call, answering)
        ctx.observed.note(rid=getattr(sse_format, "id", None))

        async def after(answer: Answer) -> None:
            await self._remember(call, answer)
            self.record(sse_format.id, call, answer, ctx)

        sse = _Stream(self.metrics, sse_format, answering, after, ctx.observed)
        return StreamingResponse(
            sse.run(first, events),
            media_type="text/event-stream",
            headers={**headers, **call.reply_headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class _Stream:
    def __init__(
        self,
        metrics: Metrics,
        sse: SseFormat,
        expert: str,
        after: Callable[[Answer], Awaitable[None]],
        observed: Observed,
    ) -> None:
        self.metrics = metrics
        self.sse = sse
        self.expert = expert
        self.after = after  # once the whole answer is known
        self.observed = observed

    async def run(self, first: StreamEvent, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
        for part in self.sse.start():
            yield part
        try:
            event: StreamEvent | None = first
            while event is not None:
                if event.type == "delta":
                    for part in self.sse.delta(event):
                        yield part
                elif event.answer is not None:
                    await self.after(event.answer)  # stored before the client can continue from it
                    for part in self.sse.done(self._finish(event.answer)):
                        yield part
                    return
                event = await anext(events, None)
        except Exception as exc:  # after the first byte the status is sent: say it in-band
            self.metrics.stream_errors.labels(expert=self.expert).inc()
            self.observed.note(error=f"stream interrupted: {exc}")
            log.warning("stream from %s interrupted after the first token: %s", self.expert, exc)
            message = str(exc) if isinstance(exc, CoEError) else "internal server error"
            if not isinstance(exc, CoEError):
                log.error("stream failed: %s", type(exc).__name__, exc_info=exc)
            for part in self.sse.error(message):
                yield part
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _finish(self, answer: Answer) -> Answer:
        self.metrics.observe_answer(answer)
        self.observed.note(answer=answer)
        return answer
