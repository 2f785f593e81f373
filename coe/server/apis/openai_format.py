"""OpenAI's reply shapes, shared by Chat Completions and Completions: the whole reply, and the
server-sent chunks (``data: {...}`` lines with one id, the model that answers, a usage chunk on
request, an error event and ``[DONE]``)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from coe.server.errors import error_body
from coe.server.gateway import EXPERT_PREFIX, ApiRequest
from coe.types import Answer

DONE = b"data: [DONE]\n\n"


def whole(prefix: str, kind: str, answer: Answer, call: ApiRequest, choice: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed reply of one choice, with the trace when asked."""
    out: dict[str, Any] = {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": EXPERT_PREFIX + answer.expert,
        "choices": [choice],
        "usage": answer.usage.model_dump(),
    }
    if call.trace:
        out["coe"] = answer.trace.model_dump()
    return out


class OpenAIChunks:
    prefix = "chatcmpl"
    object = "chat.completion.chunk"

    def __init__(self, call: ApiRequest, expert: str) -> None:
        self.call = call
        self.expert = expert
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": EXPERT_PREFIX + self.expert,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    def finish(self, answer: Answer, last: dict[str, Any]) -> list[bytes]:
        """The last choice (with the trace when asked), the usage chunk when asked, ``[DONE]``."""
        extra: dict[str, Any] = {"coe": answer.trace.model_dump()} if self.call.trace else {}
        out = [self.chunk([last], **extra)]
        if self.call.include_usage:
            out.append(self.chunk([], usage=answer.usage.model_dump()))
        return [*out, DONE]

    def error(self, message: str) -> list[bytes]:
        body = error_body(message, "api_error", None, "stream_interrupted")
        return [f"data: {json.dumps(body)}\n\n".encode(), DONE]
