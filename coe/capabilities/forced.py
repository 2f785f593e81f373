"""``tool_choice: required`` or a named function, on an engine that does not enforce it.

llama-server renders the tools into the prompt but ignores ``required`` (a small model answers in
prose) and drops a named choice as the wrong type; it does enforce a JSON schema. So CoE sends the
tools (the model still reads their descriptions) with ``response_format`` set to a schema whose
instances are exactly one call of an allowed tool, ``{"name": ..., "arguments": {...}}``, and turns
the reply back into an OpenAI ``tool_calls`` message. Streamed, the arguments go out as fragments
while they are generated. One call per reply: a forced choice yields exactly one call.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from coe.errors import BadReply
from coe.types import FunctionCall, FunctionCallDelta, NamedToolChoice, Request, Tool, ToolCall, ToolCallDelta

SCHEMA_NAME = "coe_tool_call"
_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*', re.DOTALL)


def allowed_tools(request: Request) -> list[Tool]:
    tools = request.tools or []
    if isinstance(request.tool_choice, NamedToolChoice):
        wanted = request.tool_choice.function.name
        return [t for t in tools if t.function.name == wanted]
    return tools


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """Instances: one call of one of ``tools``. ``name`` comes first so a stream names the call
    before its arguments (llama.cpp's grammar keeps the order of ``properties``)."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": t.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def constrain(payload: dict[str, Any], request: Request) -> dict[str, Any]:
    """The expert's payload with the call forced through ``response_format``."""
    out = {k: v for k, v in payload.items() if k not in ("tool_choice", "parallel_tool_calls")}
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "schema": call_schema(allowed_tools(request)), "strict": True},
    }
    return out


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call(expert: str, text: str, request: Request) -> ToolCall:
    """The forced reply as a tool call; ExpertError (so the next candidate is tried) when it is not
    one: cut off by max_tokens, or arguments that do not match the tool's schema."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BadReply(expert, f"the forced tool call is not valid JSON (cut off?): {text[:120]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or "arguments" not in data:
        raise BadReply(expert, f"the forced tool call has no name and arguments: {text[:120]!r}")
    check_arguments(expert, data["name"], data["arguments"], request)
    return ToolCall(
        id=new_call_id(), function=FunctionCall(name=data["name"], arguments=json.dumps(data["arguments"]))
    )


def check_arguments(expert: str, name: str, arguments: Any, request: Request) -> None:
    tool = next((t for t in allowed_tools(request) if t.function.name == name), None)
    if tool is None:
        raise BadReply(expert, f"the forced tool call names {name!r}, which the request does not allow")
    if tool.function.parameters:
        import jsonschema

        try:
            jsonschema.validate(arguments, tool.function.parameters)
        except jsonschema.ValidationError as exc:
            raise BadReply(
                expert, f"the arguments of {name!r} do not match its schema: {exc.message}"
            ) from None


class CallStream:
    """Turns the streamed JSON text of a forced call into OpenAI tool-call deltas: one naming the
    call (as soon as the name is complete), then the arguments' text as it arrives. The last few
    characters are held back until the end: they may be the closing brace of the outer object."""

    def __init__(self, expert: str, request: Request) -> None:
        self.expert = expert
        self.request = request
        self.buffer = ""
        self.name: str | None = None
        self.id = new_call_id()
        self.sent = 0  # characters of the arguments text already sent

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.buffer += text
        out: list[ToolCallDelta] = []
        if self.name is None:
            head = _HEAD.match(self.buffer)
            if head is None:
                return out
            self.name = json.loads(f'"{head.group(1)}"')
            self.buffer = self.buffer[head.end() :]
            out.append(
                ToolCallDelta(
                    index=0,
                    id=self.id,
                    type="function",
                    function=FunctionCallDelta(name=self.name, arguments=""),
                )
            )
        safe = len(self.buffer.rstrip(" \t\r\n}"))  # what cannot be the outer object's closing brace
        if safe > self.sent:
            out.append(
                ToolCallDelta(index=0, function=FunctionCallDelta(arguments=self.buffer[self.sent : safe]))
            )
            self.sent = safe
        return out

    def finish(self) -> tuple[list[ToolCallDelta], ToolCall]:
        """The deltas still held back, and the whole call (checked like ``parse_call``)."""
        tail = self.buffer.rstrip()
        if self.name is None or not tail.endswith("}"):
            raise BadReply(self.expert, f"the forced tool call was cut off: {self.buffer[:120]!r}")
        arguments = tail[:-1].rstrip()
        try:
            parsed = json.loads(arguments)
        except ValueError:
            raise BadReply(
                self.expert, f"the forced tool call's arguments are not JSON: {arguments[:120]!r}"
            ) from None
        check_arguments(self.expert, self.name, parsed, self.request)
        rest = arguments[self.sent :]
        deltas = [ToolCallDelta(index=0, function=FunctionCallDelta(arguments=rest))] if rest else []
        call = ToolCall(id=self.id, function=FunctionCall(name=self.name, arguments=arguments))
        return deltas, call
