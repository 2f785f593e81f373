"""Is the new turn a continuation of the conversation, or a new topic? A small logistic regression.

Why a model and not the router's confidence alone: many follow-ups are confidently routed elsewhere
on their own ("How can we reverse this process?" reads as code), and many real topic changes are
routed with middling confidence, so no threshold on the router separates them. What does: whether
the turn refers back ("your previous response", "now", "it"), how short it is, and how close it is to
the turn before (cosine of their embeddings). The features are the turn's embedding, those cues and
that cosine; the probability ``f`` weighs the kept expert against the turn's own decision in
``coe.sessions.policy``.

The artefact is a pickle-free ``.npz`` (``coe.data.npz``) recording the embedding space it was fitted
in: a registry with another encoder gets no continuation model (the trace says so) rather than
nonsense probabilities. ``coe sessions fit`` writes one; one fitted for the default encoder ships with
CoE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from coe.data.npz import read_npz, write_npz

if TYPE_CHECKING:
    import numpy as np

FORMAT = "coe-continuation"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).with_name("continuation.npz")
# What refers back to the conversation. Counted in the first characters: a pasted document that
# happens to contain "it" is not a follow-up.
_CUES = re.compile(
    r"\b(?:your|the|my|that) (?:previous|earlier|last|above|first|second|original|same)\b"
    r"|\b(?:previous|above|earlier|again|continue|rewrite|rephrase|revise|rework|modify|instead|also)\b"
    r"|\b(?:it|this|that|these|those|them|now)\b|\bwhat about\b|\bhow about\b",
    re.IGNORECASE,
)
_CUE_CHARS = 300
_SHORT_CHARS = 80


class ContinuationHeader(BaseModel):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    space: str = Field(description="embedding space of the vectors it reads (Embedder.space)")
    max_tokens: int | None = Field(description="the truncation the turns were embedded with")
    switch_confidence: float = Field(description="fitted: see coe.sessions.policy")
    switch_margin: float = Field(description="fitted: see coe.sessions.policy")
    trained_on: dict[str, int] = Field(default_factory=dict, description="rows per source")
    validation: dict[str, float] = Field(
        default_factory=dict, description="metrics on the fit's own held-out part"
    )


def cue_features(text: str) -> tuple[float, float]:
    return float(len(_CUES.findall(text[:_CUE_CHARS]))), float(len(text) < _SHORT_CHARS)


def features(current: np.ndarray, previous: np.ndarray | None, text: str) -> np.ndarray:
    """One row: the turn's embedding, its cues, and its cosine to the closest earlier turn (0 when
    there is none)."""
    import numpy as np

    cos = float(np.dot(current, previous)) if previous is not None else 0.0
    return np.concatenate([current, [*cue_features(text), cos, cos * cos]]).astype(np.float32)


@dataclass
class ContinuationModel:
    header: ContinuationHeader
    coef: np.ndarray
    intercept: float

    def probability(self, current: np.ndarray, previous: np.ndarray | None, text: str) -> float:
        import numpy as np

        z = float(features(current, previous, text) @ self.coef + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def save(self, path: Path) -> None:
        import numpy as np

        write_npz(
            path, self.header.model_dump_json(), {"coef": self.coef, "intercept": np.array([self.intercept])}
        )

    @classmethod
    def load(cls, path: Path) -> ContinuationModel:
        raw, arrays = read_npz(path, "continuation model")
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT
            or raw.get("format_version") != FORMAT_VERSION
        ):
            raise ValueError(f"{path}: not a continuation model of format {FORMAT} v{FORMAT_VERSION}")
        header = ContinuationHeader.model_validate(raw)
        return cls(header, arrays["coef"].astype("float32"), float(arrays["intercept"][0]))
