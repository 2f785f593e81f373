"""POST /v1/chat/completions: the body checked against the field table (apis/policy.py), turned
into a Request as the caller wrote it, and the Answer back as a chat.completion (or chunks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.experts.calls import OPTIONS
from coe.server.apis.openai_format import OpenAIChunks, whole
from coe.server.apis.policy import CHAT
from coe.server.apis.translate import (
    bad,
    chat_messages,
    check_max_tokens,
    check_response_format,
    check_tools,
    forwarded_params,
    parse_body,
)
from coe.server.gateway import ApiAdapter, ApiRequest, finish_reason
from coe.server.settings import ServerSettings
from coe.types import (
    Answer,
    ReasoningEffort,
    Request,
    ResponseFormat,
    StreamEvent,
    Tool,
    ToolCallDelta,
    ToolChoice,
)

Finite = Annotated[float, Field(allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]


class TraceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool = False


class ChatBody(BaseModel):
    """The types of the fields the table lists (tests check both name the same fields); ``messages``
    is checked part by part in translate.chat_messages, the refusals come from the table."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[Any] = Field(min_length=1, max_length=1024)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    n: int | None = Field(None, ge=1)
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    reasoning_effort: ReasoningEffort | None = None
    service_tier: str | None = None
    store: bool | None = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    moderation: Any = None
    verbosity: Any = None
    coe: TraceOptions | None = None


def message_of(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning  # as llama-server, vLLM and DeepSeek name it
    if answer.tool_calls:
        message["tool_calls"] = [c.model_dump() for c in answer.tool_calls]
    else:
        message["content"] = answer.text
    return message


def tool_call_entries(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Tool-call fragments as OpenAI streams them: a call's first entry is its header (id, type,
    name, ``arguments: ""``), each later one a piece of the arguments. One entry per chunk, so that a
    client reading ``delta.tool_calls[0]`` sees every piece."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        if d.id is not None:
            function = {"name": d.function.name or "", "arguments": ""}
            out.append({"index": d.index, "id": d.id, "type": "function", "function": function})
            if d.function.arguments:
                out.append({"index": d.index, "function": {"arguments": d.function.arguments}})
        else:
            out.append({"index": d.index, "function": d.function.model_dump(exclude_none=True)})
    return out


class SseFormat(OpenAIChunks):
    """OpenAI chunks: a role chunk, deltas (content, tool-call fragments, logprobs), a finish chunk
    (with the trace when asked), usage when asked, ``[DONE]``; or an error event and ``[DONE]``."""

    def _delta(self, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
        return self.chunk([choice])

    def start(self) -> list[bytes]:
        return [self._delta({"role": "assistant", "content": ""})]

    def delta(self, event: StreamEvent) -> list[bytes]:
        delta: dict[str, Any] = {}
        if event.reasoning:
            delta["reasoning_content"] = event.reasoning
        if event.text:
            delta["content"] = event.text
        out = [self._delta(delta, event.logprobs)] if delta or event.logprobs else []
        return out + [self._delta({"tool_calls": [e]}) for e in tool_call_entries(event.tool_calls or [])]

    def done(self, answer: Answer) -> list[bytes]:
        finish = finish_reason(answer, self.call.request.params.get("max_tokens"))
        return self.finish(answer, {"index": 0, "delta": {}, "finish_reason": finish})


class ChatApi:
    """The Chat Completions adapter (coe.server.gateway.ApiAdapter)."""

    info = CHAT

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}  # no header of OpenAI's changes what CoE does

    def parse(self, data: Any, settings: ServerSettings, trace_header: bool) -> ApiRequest:
        data, body, extra = parse_body(CHAT, ChatBody, data, settings.unknown_fields)
        messages = chat_messages(body.messages, settings.unknown_fields)
        check_max_tokens(body.max_tokens, settings.max_tokens_limit, "max_tokens")
        check_max_tokens(body.max_completion_tokens, settings.max_tokens_limit, "max_completion_tokens")
        check_tools(body.tools, body.tool_choice)
        check_response_format(body.response_format)
        if body.top_logprobs is not None and not body.logprobs:
            raise bad("top_logprobs", "needs logprobs: true")
        params = forwarded_params(data, CHAT.forwarded_names(), skip=("messages", *OPTIONS)) | extra
        if body.max_completion_tokens is not None:
            params["max_tokens"] = body.max_completion_tokens
        typed = {k: getattr(body, k) for k in OPTIONS if getattr(body, k) is not None}
        request = Request(messages=messages, params=params, **typed)
        return ApiRequest(
            request=request,
            model=body.model,
            stream=body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            trace=trace_header or bool(body.coe and body.coe.trace),
        )

    def body(self, answer: Answer, call: ApiRequest) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "message": message_of(answer),
            "logprobs": {"content": answer.logprobs} if call.request.logprobs else None,
            "finish_reason": finish_reason(answer, call.request.params.get("max_tokens")),
        }
        return whole("chatcmpl", "chat.completion", answer, call, choice)

    def sse(self, call: ApiRequest, expert: str) -> SseFormat:
        return SseFormat(call, expert)


ADAPTER: ApiAdapter = ChatApi()
