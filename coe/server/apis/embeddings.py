"""POST /v1/embeddings: vectors from the registry's own sentence encoder (``embedder:``, the one
routing uses), model id ``coe/embedder``. No expert is called, so there is no routing or fallback;
auth, body limits and metrics are the same as for every endpoint."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.capabilities.needs import BYTES_PER_TOKEN
from coe.server.apis.policy import EMBEDDINGS, check_fields
from coe.server.apis.translate import bad, body_object, validate
from coe.server.errors import APIError
from coe.server.gateway import EMBEDDER
from coe.server.settings import ServerSettings

if TYPE_CHECKING:
    import numpy as np

MAX_INPUTS = 2048


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(description="token-id inputs fail here: strings only")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Any = None
    user: str | None = None


def parse(data: Any, settings: ServerSettings) -> EmbeddingsBody:
    data = body_object(data)
    extra = check_fields(EMBEDDINGS, data, settings.unknown_fields)
    if extra:  # nothing to forward them to: no expert is called
        key = next(iter(extra))
        raise bad(key, "unknown field; /v1/embeddings calls no expert to forward it to", "unknown_field")
    body = validate(EmbeddingsBody, data)
    if body.model != EMBEDDER:
        raise APIError(
            404,
            f"the embeddings model is {EMBEDDER!r}, not {body.model!r}",
            param="model",
            code="model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_INPUTS:
        raise bad("input", f"give 1 to {MAX_INPUTS} strings")
    if any(not t for t in texts):
        raise bad("input", "empty strings have no embedding")
    return body


def texts_of(body: EmbeddingsBody) -> list[str]:
    return [body.input] if isinstance(body.input, str) else list(body.input)


def reply(vectors: np.ndarray, body: EmbeddingsBody) -> dict[str, Any]:
    texts = texts_of(body)
    data = []
    for i, vector in enumerate(vectors):
        value: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if body.encoding_format == "base64"
            else [float(x) for x in vector]
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(-(-len(t.encode()) // BYTES_PER_TOKEN) for t in texts)  # an estimate, as for routing
    return {
        "object": "list",
        "data": data,
        "model": EMBEDDER,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
