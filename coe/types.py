"""Data that crosses a boundary: requests, routing decisions, answers and the trace.

Everything here is a pydantic model so that the CLI's ``--json``, the server and the batch runner
serialise one shape, and so that a user can always answer "why did it pick that expert?" from the
trace alone.
"""

from __future__ import annotations

from typing import Literal

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
            return cls(messages=[Message(role="user", content=prompt)], **kwargs)  # type: ignore[arg-type]
        return cls(messages=[m if isinstance(m, Message) else Message(**m) for m in prompt], **kwargs)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """The text a router looks at: the last user turn (earlier turns are context, not intent)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content if self.messages else ""


class RouteDecision(BaseModel):
    """What the router chose and why; ``experts`` is the ordered list of candidates to try."""

    router: str
    experts: list[str]
    category: str | None = None
    confidence: float | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    similarities: dict[str, float] = Field(default_factory=dict)
    fallback: bool = False
    reason: str = ""

    @property
    def expert(self) -> str:
        return self.experts[0]


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

    @property
    def ok(self) -> bool:
        return self.error is None


class Attempt(BaseModel):
    expert: str
    ok: bool
    error: str | None = None
    latency_ms: float = 0.0


class Trace(BaseModel):
    """Everything that happened to one request, stage by stage."""

    model_config = ConfigDict(extra="allow")

    decision: RouteDecision | None = None
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
