"""POST /v1/chat/completions: resolve the model id, answer through CoE, shape the OpenAI reply.

Model ids: ``coe`` routes; ``coe/expert/NAME`` pins an expert; ``coe/category/NAME`` answers as if
the router had chosen that category (its expert, then the fallback expert). The reply's ``model`` is
``coe/expert/NAME`` of the expert that answered, also in the ``x-coe-*`` headers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from coe.errors import AllExpertsFailed, CoEError, ExpertError
from coe.orchestrator import CoE
from coe.server.errors import APIError, error_body, log
from coe.server.limits import ExpertBusy
from coe.server.metrics import Metrics
from coe.server.schemas import ChatCompletionRequest
from coe.types import Answer, RouteDecision, SessionRef, StreamEvent, Trace

ROUTED = "coe"
EXPERT_PREFIX = "coe/expert/"
CATEGORY_PREFIX = "coe/category/"

# The experts whose admission slot this request entered, in order; the last one is the one answering.
attempted: ContextVar[list[str] | None] = ContextVar("coe_attempted", default=None)


def model_ids(coe: CoE) -> list[str]:
    cfg = coe.config
    return (
        [ROUTED]
        + [EXPERT_PREFIX + name for name in cfg.experts]
        + [CATEGORY_PREFIX + name for name in cfg.router.category_routes()]
    )


def resolve_model(coe: CoE, model: str) -> tuple[str | None, RouteDecision | None]:
    """(pinned expert, pre-made decision) for a model id; 404 in OpenAI's shape when unknown."""
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
    raise APIError(
        404, f"the model {model!r} does not exist; see GET /v1/models", param="model", code="model_not_found"
    )


def session_ref(header: str | None, metadata: dict[str, str] | None) -> SessionRef | None:
    """The session a request names: the ``x-coe-session`` header, else ``metadata.session_id``."""
    if header:
        return SessionRef(id=header[:256], source="header")
    if metadata and metadata.get("session_id"):
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
    return headers


def _finish_reason(answer: Answer, max_tokens: int | None) -> str:
    """Answer has no finish reason; hitting the token budget is what "length" means."""
    limit = max_tokens
    return "length" if limit is not None and answer.usage.completion_tokens >= limit else "stop"


def error_for(exc: Exception) -> APIError:
    """Map CoE failures before the first byte to status codes; never leak a traceback."""
    if isinstance(exc, ExpertBusy):
        return APIError(429, str(exc), code="expert_busy", headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, AllExpertsFailed):
        log.warning("%s", exc)
        return APIError(
            503, str(exc), code="all_experts_failed", type="api_error", headers={"Retry-After": "1"}
        )
    if isinstance(exc, ExpertError):
        return APIError(503, str(exc), code="expert_failed", type="api_error", headers={"Retry-After": "1"})
    if isinstance(exc, APIError):
        return exc
    log.error("chat completion failed: %s", type(exc).__name__, exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


class ChatHandler:
    def __init__(self, coe: CoE, metrics: Metrics) -> None:
        self.coe = coe
        self.metrics = metrics

    async def handle(
        self, req: ChatCompletionRequest, trace_wanted: bool, session: SessionRef | None = None
    ) -> JSONResponse | StreamingResponse:
        expert, decision = resolve_model(self.coe, req.model)
        messages = [m.as_coe() for m in req.messages]
        params = req.params()
        if req.stream:
            return await self._stream(req, messages, expert, decision, params, trace_wanted, session)
        try:
            answer = await self.coe.aask(
                messages, expert=expert, decision=decision, session=session, **params
            )
        except Exception as exc:
            raise error_for(exc) from None
        self.metrics.observe_answer(answer)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": EXPERT_PREFIX + answer.expert,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": _finish_reason(answer, params.get("max_tokens")),
                }
            ],
            "usage": answer.usage.model_dump(),
        }
        if trace_wanted:
            body["coe"] = answer.trace.model_dump()
        self.metrics.observe_session(answer.trace.session)
        return JSONResponse(body, headers=coe_headers(answer.expert, answer.trace.decision, answer.trace))

    async def _stream(
        self,
        req: ChatCompletionRequest,
        messages: list[dict[str, str]],
        expert: str | None,
        decision: RouteDecision | None,
        params: dict[str, Any],
        trace_wanted: bool,
        session: SessionRef | None = None,
    ) -> StreamingResponse:
        tried: list[str] = []
        attempted.set(tried)
        # astream fills the trace as it goes: routing (and the session) are decided before its first
        # event, so the headers can carry the category, confidence and session.
        trace = Trace()
        try:
            events = self.coe.astream(
                messages, expert=expert, decision=decision, session=session, trace=trace, **params
            )
            # Wait for the first event: 429 and "every expert failed" still get a status code.
            first = await anext(events)
        except Exception as exc:
            raise error_for(exc) from None
        answering = first.answer.expert if first.answer is not None else (tried[-1] if tried else "unknown")
        headers = coe_headers(answering, trace.decision, trace)
        sse = _SSE(self, req, params, answering, trace_wanted)
        return StreamingResponse(
            sse.run(first, events),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class _SSE:
    """One streamed reply: OpenAI chunks, then usage/trace, then ``[DONE]``; or an error event."""

    def __init__(
        self,
        handler: ChatHandler,
        req: ChatCompletionRequest,
        params: dict[str, Any],
        expert: str,
        trace: bool,
    ) -> None:
        self.handler = handler
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)
        self.max_tokens = params.get("max_tokens")
        self.expert = expert
        self.trace = trace
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": EXPERT_PREFIX + self.expert,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    async def run(self, first: StreamEvent, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            event: StreamEvent | None = first
            while event is not None:
                if event.type == "delta":
                    yield self._chunk({"content": event.text})
                elif event.answer is not None:
                    for part in self._final(event.answer):
                        yield part
                    return
                event = await anext(events, None)
        except Exception as exc:  # after the first byte the status is sent: say it in-band
            self.handler.metrics.stream_errors.labels(expert=self.expert).inc()
            log.warning("stream from %s interrupted after the first token: %s", self.expert, exc)
            message = str(exc) if isinstance(exc, CoEError) else "internal server error"
            if not isinstance(exc, CoEError):
                log.error("stream failed: %s", type(exc).__name__, exc_info=exc)
            body = error_body(message, "api_error", None, "stream_interrupted")
            yield f"data: {json.dumps(body)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _final(self, answer: Answer) -> list[bytes]:
        self.handler.metrics.observe_answer(answer)
        self.handler.metrics.observe_session(answer.trace.session)
        extra: dict[str, Any] = {}
        if self.trace:
            extra["coe"] = answer.trace.model_dump()
        out = [self._chunk({}, _finish_reason(answer, self.max_tokens), **extra)]
        if self.include_usage:
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": EXPERT_PREFIX + self.expert,
                "choices": [],
                "usage": answer.usage.model_dump(),
            }
            out.append(f"data: {json.dumps(usage)}\n\n".encode())
        out.append(b"data: [DONE]\n\n")
        return out
