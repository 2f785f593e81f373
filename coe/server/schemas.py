"""The accepted request body of POST /v1/chat/completions.

Parsed by hand (not as a FastAPI body parameter) so that every failure, including malformed JSON and
oversized bodies, is a 400 in OpenAI's error shape naming the offending parameter.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coe.server.errors import APIError

Finite = Annotated[float, Field(allow_inf_nan=False)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_coe(self) -> dict[str, str]:
        """CoE messages carry plain text; ``developer`` is OpenAI's newer name for ``system``."""
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class TraceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Unknown fields are ignored, as most OpenAI-compatible servers do; known ones are checked."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    n: int | None = Field(None, ge=1, le=1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    coe: TraceOptions | None = None

    def params(self) -> dict[str, Any]:
        """Generation parameters passed on to the expert (only those the caller set)."""
        out: dict[str, Any] = {}
        tokens = self.max_completion_tokens or self.max_tokens
        if tokens is not None:
            out["max_tokens"] = tokens
        for key in ("temperature", "top_p", "seed"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return out


def parse_chat_request(data: Any, max_tokens_limit: int) -> ChatCompletionRequest:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param or 'body'}: {first['msg']}", param=param) from None
    tokens = req.max_completion_tokens or req.max_tokens
    if tokens is not None and tokens > max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens must be at most {max_tokens_limit}",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    return req
