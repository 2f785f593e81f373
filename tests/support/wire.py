"""Checks that a reply is what its API's own types say: Open Responses objects and stream events (the
``openresponses-types`` package, the Open Responses spec's types), Chat Completions with the OpenAI
SDK's types (and the one-entry-per-index rule of its streams), Anthropic messages with the
Anthropic SDK's. Each raises (pydantic's ValidationError or AssertionError) naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def _open_responses_events() -> dict[str, type[BaseModel]]:
    import openresponses_types.types as t

    out: dict[str, type[BaseModel]] = {}
    for name, cls in vars(t).items():
        if isinstance(cls, type) and issubclass(cls, BaseModel) and name.endswith("StreamingEvent"):
            kind = cls.model_fields["type"].annotation
            for value in kind:  # type: ignore[union-attr]
                out[value.value] = cls
    return out


def check_response(body: dict[str, Any]) -> None:
    """One response object against the spec's ResponseResource, and its items' statuses."""
    from openresponses_types.types import ResponseResource

    fmt = body["text"]["format"]
    if fmt["type"] == "json_schema":  # openresponses-types 2.4 types the schema as None (a generator bug)
        assert isinstance(fmt["schema"], dict), fmt
        body = {**body, "text": {**body["text"], "format": {**fmt, "schema": None}}}
    ResponseResource.model_validate(body)
    if body["status"] == "incomplete":
        assert body["output"][-1].get("status") == "incomplete", body["output"]


def check_response_events(events: list[dict[str, Any]]) -> None:
    """Every event against its spec type, sequence numbers 0, 1, 2..."""
    kinds = _open_responses_events()
    for i, event in enumerate(events):
        assert event["sequence_number"] == i, event
        assert event["type"] in kinds, f"not an Open Responses event: {event['type']}"
        kinds[event["type"]].model_validate(event)
        if "response" in event:
            check_response(event["response"])


def check_chat(body: dict[str, Any]) -> None:
    from openai.types.chat import ChatCompletion

    ChatCompletion.model_validate(body)


def check_chat_chunks(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Each chunk against the SDK's type, at most one ``delta.tool_calls`` entry per index in a chunk;
    returns the calls as a naive reader assembles them (``tool_calls[0]`` of each chunk)."""
    from openai.types.chat import ChatCompletionChunk

    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        for choice in chunk["choices"]:
            entries = choice["delta"].get("tool_calls") or []
            indexes = [e["index"] for e in entries]
            assert len(indexes) == len(set(indexes)), f"two entries of one index in a chunk: {entries}"
            if entries:
                first = entries[0]
                call = calls.setdefault(first["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = first.get("id") or call["id"]
                call["name"] += (first.get("function") or {}).get("name") or ""
                call["arguments"] += (first.get("function") or {}).get("arguments") or ""
    return calls


def check_message(body: dict[str, Any]) -> None:
    from anthropic.types import Message

    Message.model_validate(body)
    for block in body["content"]:
        if block["type"] == "tool_use":
            assert block["id"].startswith("toolu_") and isinstance(block["input"], dict), block


def sse(text: str) -> list[tuple[str | None, Any]]:
    """(event name or None, data parsed, or the string ``[DONE]``) per server-sent event."""
    out: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            joined = "\n".join(data)
            out.append((name, joined if joined == "[DONE]" else json.loads(joined)))
    return out
