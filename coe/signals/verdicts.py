"""What a signal found, as the trace shows it. Evidence names where and what (message index, offsets,
PII types, scores), never the matched values: a trace is logged and returned to callers, and a
redacted email address must not come back through it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Applied = Literal["none", "block", "route", "redact", "flag"]


class SignalVerdict(BaseModel):
    """One check's result on one request."""

    signal: str = Field(description="guard | pii")
    verdict: str = Field(description="guard: jailbreak | injection | benign; pii: pii | clean")
    score: float | None = Field(None, description="guard: the highest attack probability; pii: best match")
    threshold: float | None = None
    action: Applied = Field("none", description="what was done about it")
    route: str | None = Field(None, description="the expert it was sent to (action route)")
    evidence: dict[str, Any] = Field(default_factory=dict, description="where, never the values")
    latency_ms: float = 0.0


class SignalsTrace(BaseModel):
    """The signals stage of one request."""

    verdicts: list[SignalVerdict] = Field(default_factory=list)
    blocked_by: str | None = Field(None, description="the signal whose verdict blocked the request")
    routed_to: str | None = Field(None, description="an expert chosen by a signal instead of the router")
    flagged: list[str] = Field(default_factory=list, description="signals whose verdict was flag")
    redacted: int = Field(0, description="PII spans replaced before any expert saw the request")
    error: str | None = Field(None, description="a check that could not run (the request went on)")
