"""Data that crosses a boundary: requests, routing decisions, answers and the trace.

Everything here is a pydantic model so that the CLI's ``--json``, the server and the batch runner
serialise one shape, and so that a user can always answer "why did it pick that expert?" from the
trace alone.

A request is OpenAI's chat shape, the one every API adapter of the server translates to: messages
with roles system, developer, user, assistant and tool; content as a string or a list of typed parts
(text, image_url, input_audio, file); assistant ``tool_calls`` and the tool turn's ``tool_call_id``.
Routers read ``Request.text`` only (the text parts of the last user turn), so images, tools and
earlier turns never change where a plain prompt goes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.signals.verdicts import SignalsTrace

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="https URL or data:image/...;base64 URL")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class InputAudio(BaseModel):
    data: str = Field(description="base64-encoded audio")
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    type: Literal["input_audio"] = "input_audio"
    input_audio: InputAudio


class FileRef(BaseModel):
    file_data: str | None = Field(None, description="base64 data URL of the file")
    file_id: str | None = None
    filename: str | None = None


class FilePart(BaseModel):
    type: Literal["file"] = "file"
    file: FileRef


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON text, as OpenAI sends them")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One turn. Keys beyond these (``server.unknown_fields: forward``) are kept and sent on as given."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The text of this turn: the string, or its text parts joined."""
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if isinstance(p, TextPart))
        return self.content or ""

    def payload(self) -> dict[str, Any]:
        """The OpenAI wire form: unset optional keys left out (llama.cpp templates test for them),
        except an assistant turn's null content beside its tool calls, as OpenAI sends it."""
        out = self.model_dump(exclude_none=True, by_alias=True)
        if self.content is None:
            out["content"] = None if self.tool_calls else ""
        return out


class FunctionDef(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema of the arguments object")
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class Request(BaseModel):
    """One prompt to route and answer. ``expert`` pins an expert and skips routing.

    ``params`` are the generation settings sent to the expert over its own defaults (max_tokens,
    temperature, top_p, stop, seed, penalties, logit_bias, user, metadata, engine extensions). The
    fields below them change what CoE does, not only what the expert does: they decide which experts
    can serve the request (capabilities) and how a forced tool call is obtained."""

    messages: list[Message]
    expert: str | None = None
    params: dict[str, object] = Field(default_factory=dict)
    id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning_effort: ReasoningEffort | None = None

    @classmethod
    def from_input(cls, prompt: str | list[Message] | list[dict[str, Any]], **kwargs: Any) -> Request:
        if isinstance(prompt, str):
            return cls(messages=[Message(role="user", content=prompt)], **kwargs)
        return cls(
            messages=[m if isinstance(m, Message) else Message.model_validate(m) for m in prompt], **kwargs
        )

    @property
    def text(self) -> str:
        """The text a router looks at: the last user turn (earlier turns are context, not intent)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return self.messages[-1].text if self.messages else ""

    @property
    def forced_tool(self) -> bool:
        """The caller requires a tool call: ``tool_choice`` is ``required`` or names a function."""
        return bool(self.tools) and (
            self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        )

    @property
    def uses_tools(self) -> bool:
        """The expert may answer with tool calls (tools given and ``tool_choice`` is not ``none``)."""
        return bool(self.tools) and self.tool_choice != "none"


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
    tool_calls: list[ToolCall] | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    finish_reason: str | None = None
    error: str | None = None
    bad_reply: bool = Field(False, description="it answered, but with a reply that cannot be read (a 502)")
    logprobs: list[dict[str, Any]] | None = Field(
        None, description="per generated token, OpenAI-style {token, logprob, top_logprobs}, when requested"
    )
    reasoning: str | None = Field(None, description="the engine's reasoning_content (a thinking model's)")

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered(self) -> bool:
        """It answered with something: text, or tool calls (whose text is often empty)."""
        return self.ok and (bool(self.text.strip()) or bool(self.tool_calls))


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


class CapabilityTrace(BaseModel):
    """What the request needed and which candidates could not serve it, before any expert was called."""

    needed: dict[str, str] = Field(default_factory=dict, description="capability -> the field that needs it")
    prompt_tokens: int | None = Field(None, description="the estimate checked against context windows")
    excluded: dict[str, str] = Field(default_factory=dict, description="expert -> why it cannot serve it")
    tool_answerer: str | None = Field(
        None, description="with tools and several recruited experts: the one that answers with tool calls"
    )
    enforced_tool_choice: bool = Field(
        False, description="CoE constrained the reply to a call of the allowed tools (the engine does not)"
    )


class CacheTrace(BaseModel):
    """What the semantic cache (coe.signals.cache) did: replayed an answer, or missed and why."""

    status: Literal["hit", "miss", "skip", "error"] = Field(
        description="hit: the answer is a replay; miss: none matched (stored after); skip: not cacheable; "
        "error: the store failed, answered uncached"
    )
    match: Literal["exact", "semantic"] | None = None
    entry: str | None = Field(None, description="the matched entry's id")
    matched_text: str | None = Field(None, description="the last user turn the replayed answer was given to")
    similarity: float | None = Field(None, description="cosine of the router embeddings")
    probability: float | None = Field(None, description="the pair verifier's probability")
    reason: str = ""
    refused: str | None = Field(
        None,
        description="a miss the verifier would have replayed, refused by the guard: date, number, "
        "direction, negation, identifier, entity or words (coe.signals.cache.features.REFUSALS)",
    )
    candidates: int = Field(0, description="entries of the same scope compared")
    lookup_ms: float = 0.0
    error: str | None = None


class Trace(BaseModel):
    """Everything that happened to one request, stage by stage."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(None, description="the trace store's record id, for feedback (when recorded)")
    signals: SignalsTrace | None = None
    decision: RouteDecision | None = None
    session: SessionTrace | None = None
    retrieval: RetrievalTrace | None = None
    aggregation: AggregationTrace | None = None
    capabilities: CapabilityTrace | None = None
    cache: CacheTrace | None = None
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
    tool_calls: list[ToolCall] | None = None
    finish_reason: str | None = Field(None, description="the answering expert's: stop, length, tool_calls")
    logprobs: list[dict[str, Any]] | None = None
    reasoning: str | None = Field(None, description="the answering expert's reasoning, passed through")

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
        } | ({"tool_calls": [c.model_dump() for c in self.tool_calls]} if self.tool_calls else {})


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A fragment of a streamed tool call, as OpenAI streams them: ``index`` says which call; the
    first fragment of a call carries its ``id`` and name, the next ones pieces of the arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta = Field(default_factory=FunctionCallDelta)


class StreamEvent(BaseModel):
    """One item of ``CoE.astream``: deltas (text and tool-call fragments), then a final event carrying
    the whole Answer (its ``tool_calls`` assembled from the fragments)."""

    type: Literal["delta", "done"]
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[dict[str, Any]] | None = None
    answer: Answer | None = None
