"""What one request leaves behind: a ``TraceRecord`` (and the ``Feedback`` rows that grade it).

Built from the Answer's Trace once the request is answered. The id is the response id the API
returned (``chatcmpl-…``, ``resp_…``, ``msg_…``), so feedback on a response finds its record. The
prompt is kept as a sha256; its text and the answer's only when ``traces.store_text`` is on.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from coe.types import Answer, Message, Request

ThumbsValue = Literal["up", "down"]


class TraceDecision(BaseModel):
    """The routing decision, as logged: what replay compares against."""

    router: str
    category: str | None = None
    confidence: float | None = None
    candidates: list[str] = Field(default_factory=list, description="the experts in order of preference")
    exclusions: dict[str, str] = Field(
        default_factory=dict, description="experts left out by the capability check, with why"
    )
    fallback: bool = Field(False, description="the router fell back (low confidence or no category)")


class TraceAttempt(BaseModel):
    expert: str
    ok: bool
    error: str | None = None
    latency_ms: float = 0.0


class TraceRecord(BaseModel):
    """One request. ``cache`` (the semantic cache's outcome) and ``guard`` (the guard and PII
    verdicts, ``trace.signals``) stay None when a registry has no such stage."""

    id: str
    time: float = Field(default_factory=time.time, description="unix seconds when it was answered")
    session: str | None = None
    model: str = Field("coe", description="the model id asked for (coe, coe/expert/NAME, ...)")
    api: str | None = Field(None, description="chat, responses, messages, completions, or library")
    decision: TraceDecision | None = None
    expert: str = Field(description="the expert that answered")
    attempts: list[TraceAttempt] = Field(default_factory=list)
    fallback_used: bool = Field(False, description="another candidate than the recruited one answered")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = Field(None, description="estimated cost, in cost_unit")
    cost_unit: str | None = Field(
        None,
        description="usd (the expert's cost per million tokens) or params_b_x_mtok (params_b x tokens / 1e6)",
    )
    cache: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None
    prompt_sha256: str
    prompt: list[dict[str, Any]] | None = Field(None, description="the messages (store_text only)")
    answer: str | None = Field(None, description="the answer text (store_text only)")


class Feedback(BaseModel):
    """A grade of one recorded response: from a user (POST /v1/feedback) or a judge (coe judge)."""

    id: str
    score: float = Field(ge=0, le=1)
    label: str | None = None
    source: str = Field("user", description="user, or judge:EXPERT")
    time: float = Field(default_factory=time.time)


def new_id() -> str:
    """An id for a library answer (the server uses its API's response id)."""
    return f"coe-{uuid.uuid4().hex}"


def prompt_hash(messages: list[Message]) -> str:
    """sha256 of the messages as sent (role and content), stable across runs."""
    payload = json.dumps([m.payload() for m in messages], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def score_of(score: float | None, thumbs: ThumbsValue | None) -> float:
    """One number in [0, 1]: the score as given, or thumbs up 1.0 / down 0.0."""
    if score is not None:
        return float(score)
    if thumbs is not None:
        return 1.0 if thumbs == "up" else 0.0
    raise ValueError("give score (0..1) or thumbs (up or down)")


def build_record(
    rid: str,
    request: Request,
    answer: Answer,
    *,
    model: str = "coe",
    api: str | None = None,
    store_text: bool = False,
    params_b: float | None = None,
    price_per_mtok: float | None = None,
) -> TraceRecord:
    """The record of one answered request; ``params_b`` / ``price_per_mtok`` are the answering
    expert's, for the cost estimate."""
    trace = answer.trace
    d = trace.decision
    decision = None
    if d is not None:
        caps = trace.capabilities
        excluded = dict(caps.excluded) if caps is not None else {}
        decision = TraceDecision(
            router=d.router,
            category=d.category,
            confidence=d.confidence,
            candidates=list(d.experts),
            exclusions={str(k): str(v) for k, v in excluded.items()},
            fallback=d.fallback,
        )
    tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
    cost, unit = None, None
    if price_per_mtok is not None:
        cost, unit = price_per_mtok * tokens / 1e6, "usd"
    elif params_b is not None:
        cost, unit = params_b * tokens / 1e6, "params_b_x_mtok"
    extra = {**(trace.model_extra or {}), **{k: getattr(trace, k, None) for k in ("cache", "guard")}}
    return TraceRecord(
        id=rid,
        session=trace.session.id if trace.session is not None else None,
        model=model,
        api=api,
        decision=decision,
        expert=answer.expert,
        attempts=[TraceAttempt(**a.model_dump()) for a in trace.attempts],
        fallback_used=trace.fallback_used,
        timings_ms=dict(trace.timings_ms),
        prompt_tokens=answer.usage.prompt_tokens,
        completion_tokens=answer.usage.completion_tokens,
        cost=cost,
        cost_unit=unit,
        cache=_outcome(extra.get("cache")),
        guard=_outcome(getattr(trace, "signals", None) or extra.get("guard")),  # guard and PII verdicts
        prompt_sha256=prompt_hash(request.messages),
        prompt=[m.payload() for m in request.messages] if store_text else None,
        answer=answer.text if store_text else None,
    )


def _outcome(value: object) -> dict[str, Any] | None:
    """A cache or guard stage's trace (another stage's model or mapping) as plain JSON, if present."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return dict(value)
    return {"value": str(value)}


def user_text(record: TraceRecord) -> str | None:
    """The last user turn's text (what the router reads first), or None without stored text."""
    if not record.prompt:
        return None
    for m in reversed(record.prompt):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return None
