"""Checks and conversions every API adapter shares: pydantic errors as a 400 naming the field, the
chat messages (content parts, tool calls, tool results), tool schemas, JSON schemas, data URLs and
token limits. What each check refuses is what an engine would otherwise fail on obscurely, or
silently: a tool result no call asked for, an image that does not decode, a schema that is none."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from coe.server.apis.policy import Api, check_fields
from coe.server.errors import APIError
from coe.types import (
    AudioPart,
    FilePart,
    ImagePart,
    Message,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
)

M = TypeVar("M", bound=BaseModel)
PARTS: dict[str, type[BaseModel]] = {
    "text": TextPart,
    "image_url": ImagePart,
    "input_audio": AudioPart,
    "file": FilePart,
}
ROLES = ("system", "developer", "user", "assistant", "tool")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,(.*)$", re.DOTALL)
# Union branches and pydantic's own labels in an error location are not field names.
_LABELS = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-plain"}


def bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


def param_of(loc: Sequence[int | str], prefix: str = "") -> str:
    """A pydantic error location as the field path a user wrote (union branch labels dropped)."""
    parts = [
        str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _LABELS or p[:1].isupper()))
    ]
    return ".".join(([prefix] if prefix else []) + parts)


def validation_error(exc: ValidationError, prefix: str = "") -> APIError:
    first = exc.errors()[0]
    param = param_of(first["loc"], prefix) or prefix or "body"
    return bad(param, str(first["msg"]))


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from None


def body_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def parse_body(
    api: Api, model: type[M], data: Any, unknown: Literal["refuse", "forward"]
) -> tuple[dict[str, Any], M, dict[str, Any]]:
    """(the raw body, it validated, its unknown fields to forward): the table's refusals first, so
    a refused field is named as refused rather than as mistyped."""
    raw = body_object(data)
    extra = check_fields(api, raw, unknown)
    return raw, validate(model, raw), extra


def check_max_tokens(value: int | None, limit: int, param: str) -> None:
    if value is not None and value > limit:
        raise APIError(400, f"{param} must be at most {limit}", param=param, code="max_tokens_exceeded")


# ------------------------------------------------------------------------------------ messages


def chat_messages(raw: Any, unknown: Literal["refuse", "forward"], param: str = "messages") -> list[Message]:
    """OpenAI chat messages, each checked with its field path in the error."""
    if not isinstance(raw, list) or not raw:
        raise bad(param, "must be a non-empty list of messages")
    if len(raw) > 1024:
        raise bad(param, "at most 1024 messages")
    messages = [chat_message(m, unknown, f"{param}.{i}") for i, m in enumerate(raw)]
    check_tool_results(messages, param)
    return messages


def chat_message(raw: Any, unknown: Literal["refuse", "forward"], param: str) -> Message:
    if not isinstance(raw, dict):
        raise bad(param, "must be an object with role and content")
    role = raw.get("role")
    if role not in ROLES:
        raise bad(f"{param}.role", f"must be one of {', '.join(ROLES)}")
    content = raw.get("content")
    if isinstance(content, list):
        parts = [content_part(p, f"{param}.content.{j}") for j, p in enumerate(content)]
        if role != "user" and any(not isinstance(p, TextPart) for p in parts):
            raise bad(f"{param}.content", "only user messages may carry image, audio or file parts")
        raw = {**raw, "content": parts}
    elif content is not None and not isinstance(content, str):
        raise bad(f"{param}.content", "must be a string or a list of content parts")
    message = validate(Message, raw, param)
    if message.model_extra and unknown == "refuse":
        key = next(iter(message.model_extra))
        raise bad(
            f"{param}.{key}",
            "unknown field (server.unknown_fields: forward sends it unchanged)",
            "unknown_field",
        )
    if role == "tool" and not message.tool_call_id:
        raise bad(f"{param}.tool_call_id", "a tool message needs the id of the call it answers")
    if message.tool_calls and role != "assistant":
        raise bad(f"{param}.tool_calls", "only assistant messages carry tool calls")
    if role != "assistant" and content is None:
        raise bad(f"{param}.content", "is required")
    return message


def content_part(raw: Any, param: str) -> BaseModel:
    kind = raw.get("type") if isinstance(raw, dict) else None
    model = PARTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad(f"{param}.type", f"unknown content part type {kind!r}; expected one of {', '.join(PARTS)}")
    part = validate(model, raw, param)
    if isinstance(part, ImagePart):
        url = part.image_url.url
        if url.startswith("data:"):
            check_data_url(url, f"{param}.image_url.url", "image/")
        elif not url.startswith(("http://", "https://")):
            raise bad(f"{param}.image_url.url", "must be an http(s) URL or a data:image/...;base64 URL")
    elif isinstance(part, AudioPart):
        check_base64(part.input_audio.data, f"{param}.input_audio.data")
    elif isinstance(part, FilePart):
        if part.file.file_data is None:
            raise bad(f"{param}.file", "CoE has no file store: send the file as file_data (a data URL)")
        check_data_url(part.file.file_data, f"{param}.file.file_data", "")
    return part


def check_data_url(url: str, param: str, media: str) -> None:
    match = _DATA_URL.match(url)
    if match is None or not (match.group(1) or "").startswith(media):
        raise bad(param, f"not a valid data URL (data:{media or 'TYPE/SUBTYPE'}...;base64,DATA)")
    check_base64(match.group(3), param)


def check_base64(data: str, param: str) -> None:
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad(param, "the data is not valid base64") from None
    if not decoded:
        raise bad(param, "the data is empty")


def check_tool_results(messages: Sequence[Message], param: str = "messages") -> None:
    """A tool message answers a call an earlier assistant turn made: an unknown id is a client bug
    the expert would paper over. An earlier call's arguments must be JSON: the engines parse them to
    render the prompt (llama-server answers 500, vLLM 400), so the 400 says which (a reply cut at
    max_tokens, passed on as the text it was, is the usual source)."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        for j, call in enumerate(message.tool_calls or []):
            calls.add(call.id)
            try:
                json.loads(call.function.arguments or "{}")
            except ValueError:
                where = f"{param}.{i}.tool_calls.{j}.function.arguments"
                raise bad(
                    where, "is not JSON; the experts' chat templates render arguments as JSON"
                ) from None
        if message.role == "tool" and message.tool_call_id not in calls:
            raise bad(
                f"{param}.{i}.tool_call_id",
                f"{message.tool_call_id!r} matches no tool call of an earlier assistant message",
            )


# ---------------------------------------------------------------------------------- tools, schemas


def check_schema(schema: Any, param: str) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise bad(param, "must be a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise bad(
            param, f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else "")
        ) from None


def check_tools(tools: Sequence[Tool] | None, tool_choice: ToolChoice | None, param: str = "tools") -> None:
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        name = tool.function.name
        if name in names:
            raise bad(f"{param}.{i}.function.name", f"two tools are named {name!r}")
        names.add(name)
        if tool.function.parameters is not None:
            where = f"{param}.{i}.function.parameters"
            check_schema(tool.function.parameters, where)
            if tool.function.parameters.get("type", "object") != "object":
                raise bad(where, "the arguments schema must describe an object (type: object)")
    if tool_choice is not None and not tools and tool_choice != "none":
        raise bad("tool_choice", "is only allowed with tools")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise bad("tool_choice", f"names {tool_choice.function.name!r}, which is not in tools")


def check_response_format(fmt: ResponseFormat | None, param: str = "response_format") -> None:
    if fmt is None or fmt.type != "json_schema":
        return
    if fmt.json_schema is None:
        raise bad(f"{param}.json_schema", "is required with type json_schema")
    if fmt.json_schema.schema_ is None:
        raise bad(f"{param}.json_schema.schema", "is required")
    check_schema(fmt.json_schema.schema_, f"{param}.json_schema.schema")


def forwarded_params(data: Mapping[str, Any], names: Sequence[str], skip: Sequence[str]) -> dict[str, Any]:
    """The fields sent to the expert as the caller wrote them (not re-serialised)."""
    return {k: data[k] for k in names if k not in skip and data.get(k) is not None}
