"""POST /v1/completions (OpenAI's legacy prompt completion): routed on the prompt and answered as
one chat turn, the prompt being the user message, so the expert's chat template applies (CoE's
experts are chat models; there is no raw-text path through routing and fallbacks)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from coe.server.apis.chat import StreamOptions, TraceOptions
from coe.server.apis.openai_format import OpenAIChunks, whole
from coe.server.apis.policy import COMPLETIONS
from coe.server.apis.translate import check_max_tokens, forwarded_params, parse_body
from coe.server.gateway import ApiAdapter, ApiRequest, finish_reason
from coe.server.settings import ServerSettings
from coe.types import Answer, Message, Request, StreamEvent

Finite = Annotated[float, Field(allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)]


class CompletionsBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: Finite | None = Field(None, ge=0, le=2)
    top_p: Finite | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    suffix: Any = None
    coe: TraceOptions | None = None


def legacy_logprobs(tokens: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """Chat logprobs in the legacy shape: parallel lists of tokens, logprobs, top alternatives, offsets."""
    if tokens is None:
        return None
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(t.get("token", ""))
        out["token_logprobs"].append(t.get("logprob", -math.inf))
        out["top_logprobs"].append(
            {a.get("token", ""): a.get("logprob") for a in t.get("top_logprobs") or []}
        )
        out["text_offset"].append(offset)
        offset += len(t.get("token", ""))
    return out


class SseFormat(OpenAIChunks):
    prefix = "cmpl"
    object = "text_completion"

    def __init__(self, call: ApiRequest, expert: str) -> None:
        super().__init__(call, expert)
        self.offset = 0

    def start(self) -> list[bytes]:
        return []

    def delta(self, event: StreamEvent) -> list[bytes]:
        if not event.text:
            return []
        logprobs = legacy_logprobs(event.logprobs, self.offset) if self.call.request.logprobs else None
        self.offset += len(event.text)
        return [self.chunk([{"index": 0, "text": event.text, "logprobs": logprobs, "finish_reason": None}])]

    def done(self, answer: Answer) -> list[bytes]:
        finish = finish_reason(answer, self.call.request.params.get("max_tokens"))
        return self.finish(answer, {"index": 0, "text": "", "logprobs": None, "finish_reason": finish})


class CompletionsApi:
    """The legacy Completions adapter (coe.server.gateway.ApiAdapter)."""

    info = COMPLETIONS

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {}  # no header of OpenAI's changes what CoE does

    def parse(self, data: Any, settings: ServerSettings, trace_header: bool) -> ApiRequest:
        data, body, extra = parse_body(COMPLETIONS, CompletionsBody, data, settings.unknown_fields)
        check_max_tokens(body.max_tokens, settings.max_tokens_limit, "max_tokens")
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        params = forwarded_params(data, COMPLETIONS.forwarded_names(), skip=()) | extra
        request = Request(
            messages=[Message(role="user", content=prompt)],
            params=params,
            logprobs=True if body.logprobs is not None else None,
            top_logprobs=body.logprobs,
        )
        return ApiRequest(
            request=request,
            model=body.model,
            stream=body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            trace=trace_header or bool(body.coe and body.coe.trace),
        )

    def body(self, answer: Answer, call: ApiRequest) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": answer.text,
            "logprobs": legacy_logprobs(answer.logprobs or []) if call.request.logprobs else None,
            "finish_reason": finish_reason(answer, call.request.params.get("max_tokens")),
        }
        return whole("cmpl", "text_completion", answer, call, choice)

    def sse(self, call: ApiRequest, expert: str) -> SseFormat:
        return SseFormat(call, expert)


ADAPTER: ApiAdapter = CompletionsApi()
