"""POST /v1/feedback: grade a response CoE gave, by the id it returned (``chatcmpl-…``,
``resp_…``, ``msg_…``), with a score in [0, 1] or thumbs up/down and an optional label.

The grade goes to the trace store beside the response's record; ``coe fit-map --from-traces`` and
``coe replay`` read it. An id the store does not hold is a 404 that names it; a score outside [0, 1]
a 400 (OpenAI's error shape, like every other endpoint)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coe.server.apis.translate import body_object, validate
from coe.server.errors import APIError

if TYPE_CHECKING:
    from coe.traces import Feedback, Recorder


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    score: float | None = Field(None, ge=0, le=1)
    thumbs: Literal["up", "down"] | None = None
    label: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _one_grade(self) -> FeedbackBody:
        if (self.score is None) == (self.thumbs is None):
            raise ValueError("give exactly one of score (0..1) or thumbs (up or down)")
        return self


def parse(data: Any) -> Feedback:
    from coe.traces import Feedback, score_of

    body = validate(FeedbackBody, body_object(data))
    return Feedback(id=body.id, score=score_of(body.score, body.thumbs), label=body.label)


def store(recorder: Recorder, item: Feedback) -> None:
    from coe.traces import UnknownTrace

    try:
        recorder.feedback(item)
    except UnknownTrace:
        raise APIError(
            404, f"no response {item.id!r} in the trace store (never answered here, or expired)",
            param="id", code="response_not_found",
        ) from None  # fmt: skip
    except Exception as exc:  # sqlite3.Error, OSError: the store, not the request, is wrong
        raise APIError(
            503, f"the trace store cannot be written: {exc}", code="trace_store_unavailable"
        ) from None


def reply(item: Feedback) -> dict[str, Any]:
    return {"object": "feedback", "id": item.id, "score": item.score, "label": item.label}
