"""What one request needs from the expert that answers it."""

from __future__ import annotations

import json
import math

from coe.types import Request

PART_CAPABILITY = {"image_url": "vision", "input_audio": "audio", "file": "file"}
# Per message: the role and the template's turn markers.
MESSAGE_OVERHEAD_TOKENS = 4
BYTES_PER_TOKEN = 4


def needs(request: Request) -> dict[str, str]:
    """capability -> the request field that needs it (the first one, for the error's ``param``)."""
    out: dict[str, str] = {}
    if request.uses_tools:
        out["tools"] = "tools"
    if request.response_format is not None and request.response_format.type != "text":
        out["json_schema"] = "response_format"
    if request.logprobs:
        out["logprobs"] = "logprobs"
    if request.reasoning_effort is not None:
        out["reasoning"] = "reasoning_effort"
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                cap = PART_CAPABILITY.get(part.type)
                if cap is not None and cap not in out:
                    out[cap] = f"messages.{i}.content.{j}"
    return out


def estimate_tokens(request: Request) -> int:
    """An estimate of the prompt's tokens without the expert's tokenizer (which lives in the expert's
    process): UTF-8 bytes / 4, the usual ratio of BPE tokenizers on English text, plus each turn's
    markers; the tool definitions count too (templates put them in the prompt). An estimate on the
    low side for code: an expert that still overflows answers an error and the next candidate is
    tried, as for any failed expert."""
    size = 0
    for message in request.messages:
        size += len(message.text.encode())
        for call in message.tool_calls or []:
            size += len(call.function.name) + len(call.function.arguments.encode())
    if request.tools:
        size += len(json.dumps([t.model_dump(exclude_none=True) for t in request.tools]).encode())
    return math.ceil(size / BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(request.messages)
