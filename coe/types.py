"""Data that crosses a boundary: requests, routing decisions, answers and the trace.

Everything here is a pydantic model so that the CLI's ``--json``, the server and the batch runner
serialise one shape, and so that a user can always answer "why did it pick that expert?" from the
trace alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


class Message(BaseModel):
    role: Role
    content: str


class Request(BaseModel):
    """One prompt to route and answer. ``expert`` pins an expert and skips routing."""

    messages: list[Message]
    expert: str | None = None
    params: dict[str, object] = Field(default_factory=dict)
    id: str | None = None

    @classmethod
    def from_input(cls, prompt: str | list[Message] | list[dict[str, str]], **kwargs: object) -> Request:
        if isinstance(prompt, str):
            return cls(messages=[Message(role="user", content=prompt)], **kwargs)
        return cls(messages=[m if isinstance(m, Message) else Message(**m) for m in prompt], **kwargs)

    @property
    def text(self) -> str:
        """The text a router looks at: the last user turn (earlier turns are context, not intent)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content if self.messages else ""


class RouteDecision(BaseModel):
    """What the router chose and why.

    ``experts`` is the ordered list of candidates. The first ``fanout`` of them answer concurrently
    and an aggregator merges their answers (skill-based recruitment); the rest are fallbacks, tried
    in order only when every recruited expert failed. A two-step router recruits one (``fanout=1``).
    """

    router: str
    experts: list[str]
    fanout: int = Field(1, ge=1)
    weights: dict[str, float] = Field(default_factory=dict, description="router weight per recruited expert")
    category: str | None = None
    confidence: float | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    similarities: dict[str, float] = Field(default_factory=dict)
    fallback: bool = False
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict, description="router-specific evidence")

    @property
    def expert(self) -> str:
        return self.experts[0]

    @property
    def recruited(self) -> list[str]:
        return self.experts[: self.fanout]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ExpertAnswer(BaseModel):
    """One expert's reply. ``error`` is set instead of ``text`` when the expert failed."""

    expert: str
    model: str | None = None
    text: str = ""
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[dict[str, Any]] | None = Field(
        None, description="per generated token, OpenAI-style {token, logprob, top_logprobs}, when requested"
    )

    @property
    def ok(self) -> bool:
        return self.error is None


class Attempt(BaseModel):
    expert: str
    ok: bool
    error: str | None = None
    latency_ms: float = 0.0


SessionSource = Literal["header", "argument", "metadata", "previous_response_id"]


class SessionRef(BaseModel):
    """A session the caller names, and how it named it (the trace says which)."""

    id: str = Field(min_length=1, max_length=256)
    source: SessionSource = "argument"


class SessionTrace(BaseModel):
    """What the conversation's session did to the routing decision, and the decision without it."""

    id: str | None = Field(None, description="the session (send it back as x-coe-session or session=)")
    source: Literal["header", "argument", "metadata", "previous_response_id", "history", "new", "none"] = (
        Field(
            "none",
            description="how the session was found: given by the caller, by the resent history, or new",
        )
    )
    action: Literal["new", "kept", "switched", "tool_loop", "pinned", "stateless", "off"] = "off"
    reason: str = ""
    expert: str | None = Field(None, description="the session's expert before this turn")
    turn: int = Field(0, description="this turn's number in the session (1: its first)")
    continuation: float | None = Field(None, description="how much the turn continues the conversation (0-1)")
    stateless: RouteDecision | None = Field(None, description="the decision this turn would get on its own")
    lookup_ms: float = 0.0
    error: str | None = Field(None, description="the store did not answer: routed statelessly")


class RetrievalTrace(BaseModel):
    """What the retrieval gate decided for one request, and which documents went into the prompt."""

    gate: str
    retrieve: bool
    reason: str = ""
    score: float | None = None
    documents: list[str] = Field(default_factory=list, description="ids of the chunks injected")
    scores: list[float] = Field(default_factory=list)
    searched: bool = Field(False, description="the index was searched (the similarity gate always does)")
    error: str | None = None
    latency_ms: float = 0.0


class AggregationTrace(BaseModel):
    """How several answers became one: who answered, who did not and why, and what decided."""

    aggregator: str
    answered: list[str] = Field(default_factory=list)
    missing: dict[str, str] = Field(default_factory=dict, description="expert -> why no answer")
    chosen: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """Everything that happened to one request, stage by stage."""

    model_config = ConfigDict(extra="allow")

    decision: RouteDecision | None = None
    session: SessionTrace | None = None
    retrieval: RetrievalTrace | None = None
    aggregation: AggregationTrace | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    fallback_used: bool = False
    timings_ms: dict[str, float] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    active_params_b: float | None = None


class Answer(BaseModel):
    text: str
    expert: str
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    trace: Trace = Field(default_factory=Trace)

    def summary(self) -> dict[str, object]:
        """The stable JSON shape of ``coe ask --json`` (users' scripts read these keys)."""
        decision = self.trace.decision
        return {
            "answer": self.text,
            "expert": self.expert,
            "model": self.model,
            "category": decision.category if decision else None,
            "confidence": decision.confidence if decision else None,
            "usage": self.usage.model_dump(),
            "trace": self.trace.model_dump(),
        }


class StreamEvent(BaseModel):
    """One item of ``CoE.astream``: text deltas, then a final event carrying the whole Answer."""

    type: Literal["delta", "done"]
    text: str = ""
    answer: Answer | None = None
