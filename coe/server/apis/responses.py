"""POST /v1/responses (OpenAI's Responses API) over the chat request: ``input`` items become
messages (function_call and function_call_output items an assistant tool call and its tool result),
``instructions`` a system message, ``text.format`` the response_format; the Answer comes back as
output items (a message with output_text, function_call items), streamed as typed events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.server.apis.chat import StreamOptions, TraceOptions
from coe.server.apis.policy import RESPONSES
from coe.server.apis.translate import (
    bad,
    chat_message,
    check_max_tokens,
    check_response_format,
    check_tool_results,
    check_tools,
    forwarded_params,
    parse_body,
)
from coe.server.gateway import EXPERT_PREFIX, ApiAdapter, ApiRequest, finish_reason
from coe.server.settings import ServerSettings
from coe.types import (
    Answer,
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

Finite = Annotated[float, Field(allow_inf_nan=False)]
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: None = Field(None, description="refused when set: no expert controls verbosity")


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: ReasoningEffort | None = None


class ResponsesBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[Any]
    instructions: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[Literal["message.output_text.logprobs"]] | None = None
    reasoning: Reasoning | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: dict[str, Any] | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    store: bool | None = None
    conversation: Any = None
    background: Any = None
    prompt: Any = None
    truncation: str | None = None
    max_tool_calls: Any = None
    service_tier: str | None = None
    moderation: Any = None
    context_management: Any = None
    coe: TraceOptions | None = None


def response_format(fmt: TextFormat | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type)
    if not fmt.name:
        raise bad("text.format.name", "is required with type json_schema")
    spec = JsonSchemaSpec(name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict)
    return ResponseFormat(type="json_schema", json_schema=spec)


_PART_TYPES = {"input_text": "text", "output_text": "text", "input_image": "image_url", "input_file": "file"}


def input_messages(
    raw: str | list[Any], settings: ServerSettings, check_results: bool = True
) -> list[Message]:
    if isinstance(raw, str):
        return [Message(role="user", content=raw)]
    if not raw:
        raise bad("input", "must be a string or a non-empty list of items")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        param = f"input.{i}"
        if not isinstance(item, dict):
            raise bad(param, "must be an input item object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(chat_message(_as_chat(item, param), settings.unknown_fields, param))
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and (last.tool_calls or not last.text):
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(Message(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            messages.append(_function_output(item, param))
        elif kind == "reasoning":
            continue  # an earlier reply's reasoning (clients send it back): not part of the prompt
        else:
            raise bad(
                f"{param}.type",
                f"unsupported input item {kind!r}; expected message, function_call, function_call_output, "
                "reasoning",
            )
    if check_results:
        check_tool_results(messages, "input")
    return messages


def _as_chat(item: dict[str, Any], param: str) -> dict[str, Any]:
    content = item.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _PART_TYPES:
                raise bad(
                    f"{param}.content.{j}.type",
                    f"unsupported content part {kind!r}; expected one of {', '.join(_PART_TYPES)}",
                )
            if kind in ("input_text", "output_text"):
                parts.append({"type": "text", "text": part.get("text")})
            elif kind == "input_image":
                if not part.get("image_url"):
                    raise bad(
                        f"{param}.content.{j}.image_url", "is required (CoE has no file store for file_id)"
                    )
                parts.append(
                    {
                        "type": "image_url",
                        "image_url": {"url": part["image_url"], "detail": part.get("detail")},
                    }
                )
            else:
                parts.append(
                    {"type": "file", "file": {k: part.get(k) for k in ("file_data", "file_id", "filename")}}
                )
        content = parts
    return {"role": item.get("role"), "content": content}


def _function_call(item: dict[str, Any], param: str) -> ToolCall:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
        raise bad(param, "a function_call item needs call_id, name and arguments (a JSON text)")
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def _function_output(item: dict[str, Any], param: str) -> Message:
    call_id, output = item.get("call_id"), item.get("output")
    if isinstance(output, list):
        output = "".join(
            p.get("text", "") for p in output if isinstance(p, dict) and p.get("type") == "input_text"
        )
    if not isinstance(call_id, str) or not isinstance(output, str):
        raise bad(param, "a function_call_output item needs call_id and output (a string)")
    return Message(role="tool", tool_call_id=call_id, content=output)


# ------------------------------------------------------------------------------------- replies


def _ids(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_of(answer: Answer) -> dict[str, Any]:
    u = answer.usage
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    """The expert's reasoning as a ``reasoning`` item (its text in ``content``; no summary is made)."""
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content}


def text_item(
    item_id: str, text: str, logprobs: list[dict[str, Any]] | None, status: str = "completed"
) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments,
        "status": status,
    }


def truncated(answer: Answer, call: ApiRequest) -> bool:
    return finish_reason(answer, call.generation.get("max_tokens")) == "length"


def response(
    call: ApiRequest,
    resp_id: str,
    created: int,
    output: list[dict[str, Any]],
    answer: Answer | None,
    expert: str,
) -> dict[str, Any]:
    """The response object, every field Open Responses requires with the value that applied: the
    sampling settings the expert used (``ApiRequest.generation``: the request's, the expert's defaults,
    else the engine's), ``service_tier: default`` (local experts have one tier), ``background: false``."""
    req, used = call.request, call.generation
    status, incomplete, completed_at = "in_progress", None, None
    if answer is not None:
        length = truncated(answer, call)
        status = "incomplete" if length else "completed"
        incomplete = {"reason": "max_output_tokens"} if length else None
        completed_at = int(time.time())
    out: dict[str, Any] = {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "completed_at": completed_at,
        "status": status,
        "model": EXPERT_PREFIX + expert,
        "output": output,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": next((m.text for m in req.messages[:1] if m.role == "system"), None),
        "max_output_tokens": _number(used.get("max_tokens"), int),
        "max_tool_calls": None,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": call.previous_response_id,
        "store": call.store,
        "background": False,
        "service_tier": "default",
        "temperature": _number(used.get("temperature"), float, 1.0),
        "top_p": _number(used.get("top_p"), float, 1.0),
        "presence_penalty": _number(used.get("presence_penalty"), float, 0.0),
        "frequency_penalty": _number(used.get("frequency_penalty"), float, 0.0),
        "top_logprobs": req.top_logprobs or 0,
        "reasoning": {"effort": req.reasoning_effort, "summary": None} if req.reasoning_effort else None,
        "text": {"format": _format_out(req.response_format)},
        "tool_choice": req.tool_choice or "auto",
        "tools": [_tool_out(t) for t in req.tools or []],
        "truncation": "disabled",
        "metadata": req.params.get("metadata") or {},
        "safety_identifier": req.params.get("safety_identifier"),
        "prompt_cache_key": req.params.get("prompt_cache_key"),
        "usage": usage_of(answer) if answer is not None else None,
    }
    if isinstance(req.tool_choice, NamedToolChoice):
        out["tool_choice"] = {"type": "function", "name": req.tool_choice.function.name}
    if answer is not None and call.trace:
        out["coe"] = answer.trace.model_dump()
    return out


def _number(value: Any, kind: type[int] | type[float], default: float | None = None) -> Any:
    """A setting as the number the schema wants (an engine extension may have sent it as text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return kind(value)
    return default


def _tool_out(tool: Tool) -> dict[str, Any]:
    """A function tool as Open Responses lists it: ``strict`` as asked (false when not given: CoE
    constrains arguments to the schema only for a forced call)."""
    f = tool.function
    return {
        "type": "function",
        "name": f.name,
        "description": f.description,
        "parameters": f.parameters,
        "strict": bool(f.strict),
    }


def _format_out(fmt: ResponseFormat | None) -> dict[str, Any]:
    if fmt is None or fmt.json_schema is None:
        return {"type": fmt.type if fmt else "text"}
    spec = fmt.json_schema
    return {
        "type": "json_schema",
        "name": spec.name,
        "description": spec.description,
        "schema": spec.schema_,
        "strict": bool(spec.strict),
    }


class SseFormat:
    """Typed events, in order: response.created, response.in_progress; per output item
    output_item.added, its deltas (reasoning.delta, output_text.delta, function_call_arguments.delta),
    its .done events and output_item.done; response.completed (response.incomplete when the answer
    was cut at max_output_tokens, its last item ``incomplete`` too). A failure after the first byte:
    an ``error`` event, then response.failed."""

    def __init__(self, call: ApiRequest, expert: str) -> None:
        self.call = call
        self.expert = expert
        self.id = call.response_id or _ids("resp")
        self.created = int(time.time())
        self.seq = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item receiving deltas
        self.calls: dict[int, dict[str, Any]] = {}  # stream index -> function_call item
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []

    def _event(self, kind: str, **data: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    def _response(self, answer: Answer | None) -> dict[str, Any]:
        return response(self.call, self.id, self.created, self.items, answer, self.expert)

    def start(self) -> list[bytes]:
        snapshot = self._response(None)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _index(self, item: dict[str, Any]) -> int:
        return self.items.index(item)

    def _close(self, status: str = "completed") -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self._index(item)
        if item["type"] == "message":
            out = self._close_text(item, index, status)
        elif item["type"] == "reasoning":
            out = self._close_reasoning(item, index)
        else:
            item["status"] = status
            out = [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            ]
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def _close_text(self, item: dict[str, Any], index: int, status: str) -> list[bytes]:
        text = "".join(self.text)
        logprobs = self.logprobs if self.call.request.logprobs else None
        item.update(text_item(item["id"], text, logprobs, status))
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **where, text=text, logprobs=part["logprobs"]),
            self._event("response.content_part.done", **where, part=part),
        ]

    def _close_reasoning(self, item: dict[str, Any], index: int) -> list[bytes]:
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.reasoning.done", **where, text=part["text"]),
            self._event("response.content_part.done", **where, part=part),
        ]

    def _open(self, item: dict[str, Any], part: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.items.append(item)
        self.open = item
        index = self._index(item)
        out.append(self._event("response.output_item.added", output_index=index, item=dict(item, content=[])))
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [*out, self._event("response.content_part.added", **where, part=part)]

    def _open_text(self) -> list[bytes]:
        item = text_item(_ids("msg"), "", None, status="in_progress")
        item["content"] = []
        return self._open(item, {"type": "output_text", "text": "", "annotations": [], "logprobs": []})

    def _reasoning(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != "reasoning":
            item = reasoning_item(_ids("rs"), "")
            out += self._open(item, {"type": "reasoning_text", "text": ""})
            item["content"] = [{"type": "reasoning_text", "text": ""}]
        assert self.open is not None
        self.open["content"][0]["text"] += text
        where = {"item_id": self.open["id"], "output_index": self._index(self.open), "content_index": 0}
        return [*out, self._event("response.reasoning.delta", **where, delta=text)]

    def delta(self, event: StreamEvent) -> list[bytes]:
        out: list[bytes] = self._reasoning(event.reasoning) if event.reasoning else []
        if event.text:
            if self.open is None or self.open["type"] != "message":
                out += self._open_text()
            assert self.open is not None
            self.text.append(event.text)
            self.logprobs += event.logprobs or []
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self.open["id"],
                    output_index=self._index(self.open),
                    content_index=0,
                    delta=event.text,
                    logprobs=event.logprobs or [],
                )
            )
        for d in event.tool_calls or []:
            out += self._call_delta(d)
        return out

    def _call_delta(self, d: ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        item = self.calls.get(d.index)
        if item is None:
            out += self._close()
            call = ToolCall(
                id=d.id or _ids("call"), function=FunctionCall(name=d.function.name or "", arguments="")
            )
            item = call_item(_ids("fc"), call, status="in_progress")
            self.calls[d.index] = item
            self.items.append(item)
            self.open = item
            out.append(
                self._event("response.output_item.added", output_index=self._index(item), item=dict(item))
            )
        elif d.function.name:
            item["name"] += d.function.name
        if d.function.arguments:
            item["arguments"] += d.function.arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._index(item),
                    delta=d.function.arguments,
                )
            )
        return out

    def done(self, answer: Answer) -> list[bytes]:
        out = []
        if not any(i["type"] != "reasoning" for i in self.items):  # the reply still has its message
            out += self._open_text()
        length = truncated(answer, self.call)
        out += self._close("incomplete" if length else "completed")
        kind = "response.incomplete" if length else "response.completed"
        return [*out, self._event(kind, response=self._response(answer))]

    def error(self, message: str) -> list[bytes]:
        failed = self._response(None) | {
            "status": "failed",
            "error": {"code": "server_error", "message": message},
        }
        # OpenAI's error event carries code and message at the top, Open Responses in ``error``.
        error = {"type": "server_error", "code": "stream_interrupted", "message": message, "param": None}
        return [
            self._event("error", code="stream_interrupted", message=message, param=None, error=error),
            self._event("response.failed", response=failed),
        ]


class ResponsesApi:
    """The Responses adapter (coe.server.gateway.ApiAdapter)."""

    info = RESPONSES

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}  # no header of OpenAI's changes what CoE does

    def parse(self, data: Any, settings: ServerSettings, trace_header: bool) -> ApiRequest:
        data, body, extra = parse_body(RESPONSES, ResponsesBody, data, settings.unknown_fields)
        check_max_tokens(body.max_output_tokens, settings.max_tokens_limit, "max_output_tokens")
        # Tool outputs may answer calls of the stored response: checked once it is prepended (gateway).
        messages = input_messages(body.input, settings, check_results=body.previous_response_id is None)
        if body.instructions:
            messages.insert(0, Message(role="system", content=body.instructions))
        tools = [
            Tool(
                function=FunctionDef(
                    name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
                )
            )
            for t in body.tools or []
        ] or None
        choice: ToolChoice | None = (
            NamedToolChoice(function=NamedFunction(name=body.tool_choice.name))
            if isinstance(body.tool_choice, NamedChoice)
            else body.tool_choice
        )
        check_tools(tools, choice)
        fmt = response_format(body.text.format if body.text else None)
        check_response_format(fmt, "text.format")
        params = forwarded_params(data, RESPONSES.forwarded_names(), skip=("parallel_tool_calls",)) | extra
        if body.max_output_tokens is not None:
            params["max_tokens"] = body.max_output_tokens
        logprobs = bool(body.include) or body.top_logprobs is not None
        request = Request(
            messages=messages,
            params=params,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=fmt,
            logprobs=logprobs or None,
            top_logprobs=body.top_logprobs,
            reasoning_effort=body.reasoning.effort if body.reasoning else None,
        )
        return ApiRequest(
            request=request,
            model=body.model,
            stream=body.stream,
            trace=trace_header or bool(body.coe and body.coe.trace),
            response_id=_ids("resp"),
            store=body.store is not False,  # OpenAI's default: stored
            previous_response_id=body.previous_response_id,
            aliases={"reasoning_effort": "reasoning.effort"},
        )

    def body(self, answer: Answer, call: ApiRequest) -> dict[str, Any]:
        status = "incomplete" if truncated(answer, call) else "completed"
        output = [reasoning_item(_ids("rs"), answer.reasoning)] if answer.reasoning else []
        if answer.text or not answer.tool_calls:
            logprobs = answer.logprobs if call.request.logprobs else None
            output.append(text_item(_ids("msg"), answer.text, logprobs, status))
        output += [call_item(_ids("fc"), c, status) for c in answer.tool_calls or []]
        return response(
            call, call.response_id or _ids("resp"), int(time.time()), output, answer, answer.expert
        )

    def sse(self, call: ApiRequest, expert: str) -> SseFormat:
        return SseFormat(call, expert)


ADAPTER: ApiAdapter = ResponsesApi()
