"""POST /v1/messages (Anthropic's Messages API) over the chat request: ``system`` becomes a system
message; text and image blocks content parts; an assistant's tool_use blocks its tool calls; a
user's tool_result blocks tool messages (before the rest of that turn). The Answer comes back as
content blocks (thinking, text, tool_use) with Anthropic's stop reasons, streamed as Anthropic's
events. Errors leave in Anthropic's shape (coe.server.errors).

Tool-use ids: Anthropic's clients expect ``toolu_...``; the expert's own id travels inside it
(``toolu_coe_`` + its base64url), so a tool_result that names it is mapped back to the id the expert
made, with no state kept between requests. An expert's tool call whose arguments are not a JSON
object (the ``input`` Anthropic requires) comes back as a text block that shows the call as written.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.server.apis.chat import TraceOptions
from coe.server.apis.policy import MESSAGES
from coe.server.apis.translate import (
    bad,
    check_max_tokens,
    check_response_format,
    check_tool_results,
    check_tools,
    content_part,
    forwarded_params,
    parse_body,
)
from coe.server.errors import APIError
from coe.server.gateway import EXPERT_PREFIX, ApiAdapter, ApiRequest
from coe.server.settings import ServerSettings
from coe.types import (
    Answer,
    ContentPart,
    FunctionCall,
    FunctionDef,
    JsonSchemaSpec,
    Message,
    NamedFunction,
    NamedToolChoice,
    ReasoningEffort,
    Request,
    ResponseFormat,
    StreamEvent,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)

Finite = Annotated[float, Field(allow_inf_nan=False)]


class ClientTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: None = None
    strict: bool | None = None


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: OutputFormat | None = None
    effort: ReasoningEffort | Literal["max"] | None = None


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1)


def thinking_effort(thinking: ThinkingConfig | None, effort: str | None) -> ReasoningEffort | None:
    """``thinking`` as the ``reasoning_effort`` experts take: a budget below 4096 tokens is low, below
    16384 medium, else high; adaptive leaves the effort to ``output_config.effort``."""
    if effort is not None:
        return "xhigh" if effort == "max" else effort  # type: ignore[return-value]
    if thinking is None or thinking.type != "enabled":
        return None
    if thinking.budget_tokens is None:
        raise bad("thinking.budget_tokens", "is required with type enabled")
    budget = thinking.budget_tokens
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


# The first version of the Messages API's current shape; the SDKs send it or a later date.
ANTHROPIC_VERSION = "2023-06-01"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def version_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``anthropic-version``: absent, 2023-06-01 or a later date (the shape CoE serves); an earlier or
    malformed one is a 400 naming the header (2023-01-01 streamed another event format).
    ``anthropic-beta``: no beta changes what CoE serves, so they are ignored, and the reply says so
    in ``x-coe-ignored-beta`` (a client relying on one sees that it was not applied)."""
    version = headers.get("anthropic-version")
    if version is not None and not (_DATE.match(version) and version >= ANTHROPIC_VERSION):
        raise APIError(
            400,
            f"anthropic-version: {version!r} is not supported; CoE serves {ANTHROPIC_VERSION} and later",
            param="anthropic-version",
            code="unsupported_header",
        )
    beta = headers.get("anthropic-beta")
    return {"x-coe-ignored-beta": beta} if beta else {}


_TOOLU = "toolu_coe_"


def toolu_id(expert_id: str) -> str:
    """The expert's tool-call id as an Anthropic tool-use id (reversible: ``expert_id``)."""
    return _TOOLU + base64.urlsafe_b64encode(expert_id.encode()).decode().rstrip("=")


def expert_id(tool_use_id: str) -> str:
    """The id the expert made, for a ``toolu_coe_`` id; any other id as it is."""
    if not tool_use_id.startswith(_TOOLU):
        return tool_use_id
    raw = tool_use_id[len(_TOOLU) :]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return tool_use_id


class MessagesBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[Any] = Field(min_length=1, max_length=1024)
    system: str | list[Any] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: Finite | None = Field(None, ge=0, le=1)
    top_p: Finite | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[ClientTool] | None = Field(None, max_length=128)
    tool_choice: AnthropicToolChoice | None = None
    stream: bool = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingConfig | None = None
    service_tier: str | None = None
    container: Any = None
    mcp_servers: Any = None
    cache_control: Any = None
    context_management: Any = None
    diagnostics: Any = None
    inference_geo: Any = None
    speed: Any = None
    user_profile_id: Any = None
    workspace_id: Any = None
    coe: TraceOptions | None = None


def tool_choice(choice: AnthropicToolChoice | None) -> tuple[ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise bad("tool_choice.name", "is required with type tool")
        return NamedToolChoice(function=NamedFunction(name=choice.name)), parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel  # type: ignore[return-value]


def _text_blocks(raw: str | list[Any], param: str) -> str:
    if isinstance(raw, str):
        return raw
    texts = []
    for i, block in enumerate(raw):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            raise bad(f"{param}.{i}", "must be a text block")
        texts.append(block["text"])
    return "\n\n".join(texts)


def conversation(raw: list[Any]) -> list[Message]:
    messages: list[Message] = []
    for i, turn in enumerate(raw):
        param = f"messages.{i}"
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            raise bad(f"{param}.role", "must be user or assistant")
        content = turn.get("content")
        if isinstance(content, str):
            messages.append(Message(role=turn["role"], content=content))
        elif isinstance(content, list):
            messages += _blocks(turn["role"], content, param)
        else:
            raise bad(f"{param}.content", "must be a string or a list of content blocks")
    check_tool_results(messages)
    return messages


def _blocks(role: str, blocks: list[Any], param: str) -> list[Message]:
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, block in enumerate(blocks):
        where = f"{param}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise bad(f"{where}.text", "must be a string")
            parts.append(TextPart(text=block["text"]))
        elif kind == "image" and role == "user":
            parts.append(_image(block.get("source"), f"{where}.source"))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad(where, "a tool_use block needs id and name")
            calls.append(
                ToolCall(
                    id=expert_id(block["id"]),
                    function=FunctionCall(name=block["name"], arguments=json.dumps(block.get("input") or {})),
                )
            )
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad(f"{where}.tool_use_id", "is required")
            text = block.get("content", "")
            if isinstance(text, list):
                text = _text_blocks(text, f"{where}.content")
            if not isinstance(text, str):
                raise bad(f"{where}.content", "must be a string or text blocks")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append(Message(role="tool", tool_call_id=expert_id(block["tool_use_id"]), content=text))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # as Anthropic does: an earlier turn's thinking is not part of the prompt
        else:
            raise bad(f"{where}.type", f"unsupported block {kind!r} in a {role} turn")
    out = list(results)
    if parts or calls or not results:
        content: str | list[ContentPart] | None = parts if parts else (None if calls else "")
        if content and all(isinstance(p, TextPart) for p in content):
            content = "".join(p.text for p in content if isinstance(p, TextPart))
        out.append(Message(role=role, content=content, tool_calls=calls or None))
    return out


def _image(source: Any, param: str) -> ContentPart:
    if not isinstance(source, dict):
        raise bad(param, "must be an image source (base64 or url)")
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise bad(f"{param}.type", "must be base64 or url")
    part = content_part({"type": "image_url", "image_url": {"url": url}}, param)
    return part  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- replies

_STOP = {"stop": "end_turn", "length": "max_tokens"}


def stop_reason(answer: Answer, call: ApiRequest, tool_use: bool) -> tuple[str, str | None]:
    """Anthropic's stop reason and stop sequence. The sequence stays None: llama.cpp and vLLM strip
    the stop text and do not say which one matched, so a stop is reported as end_turn. ``tool_use``:
    the reply has a tool_use block (a call whose arguments were no object became text)."""
    if tool_use:
        return "tool_use", None
    reason = answer.finish_reason or "stop"
    limit = call.request.params.get("max_tokens")
    if reason != "length" and isinstance(limit, int) and answer.usage.completion_tokens >= limit:
        reason = "length"
    return _STOP.get(reason, "end_turn"), None


def tool_block(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A tool_use block, or a text block showing the call when its arguments are not a JSON object."""
    try:
        data = json.loads(arguments or "{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        text = f"[tool call {name} with arguments that are not a JSON object: {arguments}]"
        return {"type": "text", "text": text}
    return {"type": "tool_use", "id": toolu_id(call_id), "name": name, "input": data}


def thinking_block(text: str) -> dict[str, Any]:
    """The expert's reasoning; no signature (no Anthropic model made it), so the empty string."""
    return {"type": "thinking", "thinking": text, "signature": ""}


def blocks_of(answer: Answer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [thinking_block(answer.reasoning)] if answer.reasoning else []
    if answer.text or not answer.tool_calls:
        out.append({"type": "text", "text": answer.text})
    out += [tool_block(c.id, c.function.name, c.function.arguments) for c in answer.tool_calls or []]
    return out


class SseFormat:
    """message_start, then per block content_block_start / deltas (thinking_delta, text_delta,
    input_json_delta) / content_block_stop, then message_delta (stop reason, output tokens) and
    message_stop. A tool call's arguments are held until the call is whole and sent as one
    input_json_delta, so a call whose arguments are no JSON object can still become a text block
    (an SDK parses each partial_json). A failure after the first byte: an ``error`` event (the SDKs
    raise it)."""

    def __init__(self, call: ApiRequest, expert: str) -> None:
        self.call = call
        self.expert = expert
        self.id = f"msg_{uuid.uuid4().hex}"
        self.index = -1
        self.open: str | None = None  # the kind of the block receiving deltas: thinking or text
        self.pending: dict[str, Any] | None = None  # the tool call being received
        self.tool_use = False
        self.created = time.time()

    @staticmethod
    def _event(kind: str, **data: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n".encode()

    def start(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": EXPERT_PREFIX + self.expert,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [self._event("message_start", message=message), self._event("ping")]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._event("content_block_stop", index=self.index)]

    def _begin(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = kind
        return [*out, self._event("content_block_start", index=self.index, content_block=block)]

    def _text(self, kind: str, text: str) -> list[bytes]:
        out = self._flush()
        if self.open != kind:
            out += self._begin(
                kind, thinking_block("") if kind == "thinking" else {"type": "text", "text": ""}
            )
        delta = (
            {"type": "thinking_delta", "thinking": text}
            if kind == "thinking"
            else {"type": "text_delta", "text": text}
        )
        return [*out, self._event("content_block_delta", index=self.index, delta=delta)]

    def _flush(self) -> list[bytes]:
        """The tool call held so far, as a whole block."""
        call, self.pending = self.pending, None
        if call is None:
            return []
        block = tool_block(call["id"], call["name"], "".join(call["arguments"]))
        if block["type"] == "text":
            out = self._begin("text", {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": block["text"]}
            return [*out, self._event("content_block_delta", index=self.index, delta=delta), *self._close()]
        self.tool_use = True
        out = self._begin("tool_use", {**block, "input": {}})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}
        return [*out, self._event("content_block_delta", index=self.index, delta=delta), *self._close()]

    def delta(self, event: StreamEvent) -> list[bytes]:
        out: list[bytes] = []
        if event.reasoning:
            out += self._text("thinking", event.reasoning)
        if event.text:
            out += self._text("text", event.text)
        for d in event.tool_calls or []:
            if self.pending is not None and self.pending["index"] != d.index:
                out += self._flush()
            if self.pending is None:
                out += self._close()
                self.pending = {
                    "index": d.index,
                    "id": d.id or f"call_{uuid.uuid4().hex}",
                    "name": "",
                    "arguments": [],
                }
            self.pending["name"] += d.function.name or ""
            self.pending["arguments"].append(d.function.arguments or "")
        return out

    def done(self, answer: Answer) -> list[bytes]:
        out = self._flush()
        if self.index < 0:
            out += self._begin("text", {"type": "text", "text": ""})
        out += self._close()
        reason, sequence = stop_reason(answer, self.call, self.tool_use)
        usage = {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens}
        extra = {"coe": answer.trace.model_dump()} if self.call.trace else {}
        out.append(
            self._event(
                "message_delta",
                delta={"stop_reason": reason, "stop_sequence": sequence},
                usage=usage,
                **extra,
            )
        )
        return [*out, self._event("message_stop")]

    def error(self, message: str) -> list[bytes]:
        return [self._event("error", error={"type": "api_error", "message": message})]


class MessagesApi:
    """The Anthropic Messages adapter (coe.server.gateway.ApiAdapter)."""

    info = MESSAGES

    def parse(self, data: Any, settings: ServerSettings, trace_header: bool) -> ApiRequest:
        data, body, extra = parse_body(MESSAGES, MessagesBody, data, settings.unknown_fields)
        check_max_tokens(body.max_tokens, settings.max_tokens_limit, "max_tokens")
        messages = conversation(body.messages)
        if body.system:
            messages.insert(0, Message(role="system", content=_text_blocks(body.system, "system")))
        tools = [
            Tool(
                function=FunctionDef(
                    name=t.name, description=t.description, parameters=t.input_schema, strict=t.strict
                )
            )
            for t in body.tools or []
        ] or None
        choice, parallel = tool_choice(body.tool_choice)
        check_tools(tools, choice)
        fmt = None
        if body.output_config and body.output_config.format:
            spec = JsonSchemaSpec(name="output", schema=body.output_config.format.schema_)
            fmt = ResponseFormat(type="json_schema", json_schema=spec)
            check_response_format(fmt, "output_config.format")
        params = forwarded_params(data, MESSAGES.forwarded_names(), skip=()) | extra
        params["max_tokens"] = body.max_tokens
        if body.stop_sequences:
            params["stop"] = body.stop_sequences
        if body.metadata and body.metadata.user_id:
            params["user"] = body.metadata.user_id
        effort = thinking_effort(body.thinking, body.output_config.effort if body.output_config else None)
        request = Request(
            messages=messages,
            params=params,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            response_format=fmt,
            reasoning_effort=effort,
        )
        config = body.output_config
        return ApiRequest(
            request=request,
            model=body.model,
            stream=body.stream,
            trace=trace_header or bool(body.coe and body.coe.trace),
            aliases={"reasoning_effort": "output_config.effort" if config and config.effort else "thinking"},
        )

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return version_headers(headers)

    def body(self, answer: Answer, call: ApiRequest) -> dict[str, Any]:
        content = blocks_of(answer)
        reason, sequence = stop_reason(answer, call, any(b["type"] == "tool_use" for b in content))
        out: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": EXPERT_PREFIX + answer.expert,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": {
                "input_tokens": answer.usage.prompt_tokens,
                "output_tokens": answer.usage.completion_tokens,
            },
        }
        if call.trace:
            out["coe"] = answer.trace.model_dump()
        return out

    def sse(self, call: ApiRequest, expert: str) -> SseFormat:
        return SseFormat(call, expert)


ADAPTER: ApiAdapter = MessagesApi()
