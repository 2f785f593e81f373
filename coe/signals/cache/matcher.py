"""When two wordings of a last user turn may share an answer.

Three steps: a cosine floor on the router's own embeddings, a logistic verifier on cheap pair
features (``features.FEATURES``) whose threshold was chosen for precision on out-of-fold scores
(``coe.signals.cache.fitting``), then the lexical guard (``features.refusal``: the same dates,
numbers, negation, code identifiers and named entities), which has the last word so that each pair
it refuses is one the verifier would have let through, and its reason is worth counting.
The verifier is a handful of floats in the same no-pickle ``.npz`` format as the router's artefacts,
and it names the encoder space its cosines came from: cosines of another encoder mean other things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coe.data.npz import read_npz, write_npz
from coe.signals.cache.features import FEATURES, pair_features, refusal

SHIPPED = Path(__file__).with_name("verifier.npz")
FORMAT = "coe-cache-verifier/1"


@dataclass
class Verifier:
    weights: np.ndarray  # over the standardised FEATURES
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    threshold: float  # chosen on out-of-fold scores of the training pairs for the target precision
    encoder: str  # the embedding space of the cosines it was fitted on
    trained_on: dict[str, object]
    out_of_fold: dict[str, Any] | None = None  # precision, its interval, recall at the threshold

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(features) - self.mean) / self.scale
        out: np.ndarray = 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))
        return out

    def save(self, path: Path) -> None:
        header = {
            "format": FORMAT,
            "features": list(FEATURES),
            "threshold": self.threshold,
            "bias": self.bias,
            "encoder": self.encoder,
            "trained_on": self.trained_on,
            "out_of_fold": self.out_of_fold,
        }
        write_npz(path, json.dumps(header), {"weights": self.weights, "mean": self.mean, "scale": self.scale})

    @classmethod
    def load(cls, path: Path) -> Verifier:
        header, arrays = read_npz(path, "cache verifier")
        if header.get("format") != FORMAT or header.get("features") != list(FEATURES):
            raise ValueError(f"{path}: not a cache verifier of this version ({header.get('format')})")
        return cls(
            weights=arrays["weights"].astype(np.float64),
            bias=float(header["bias"]),
            mean=arrays["mean"].astype(np.float64),
            scale=arrays["scale"].astype(np.float64),
            threshold=float(header["threshold"]),
            encoder=str(header["encoder"]),
            trained_on=dict(header.get("trained_on") or {}),
            out_of_fold=header.get("out_of_fold"),
        )


@dataclass
class Verdict:
    hit: bool
    probability: float | None
    reason: str
    refused: str | None = None  # the guard's kind (features.REFUSALS) when it overruled the verifier


class Matcher:
    """``decide(cosine, new, old)``: may the answer to ``old`` be replayed for ``new``?"""

    def __init__(self, verifier: Verifier | None, min_cosine: float, threshold: float | None = None) -> None:
        self.verifier = verifier
        self.min_cosine = min_cosine
        self.threshold = threshold if threshold is not None else (verifier.threshold if verifier else None)

    def decide(self, cosine: float, new: str, old: str) -> Verdict:
        if cosine < self.min_cosine:
            return Verdict(False, None, f"cosine {cosine:.3f} < min_cosine {self.min_cosine:.2f}")
        p: float | None = None
        accepted = f"cosine {cosine:.3f} >= min_cosine {self.min_cosine:.2f}"
        if self.verifier is not None and self.threshold is not None:
            p = float(self.verifier.probability(pair_features(cosine, new, old))[0])
            if p < self.threshold:
                return Verdict(False, p, f"verifier p={p:.3f} < threshold {self.threshold:.3f}")
            accepted = f"verifier p={p:.3f} >= threshold {self.threshold:.3f}"
        objection = refusal(new, old)
        if objection is not None:
            return Verdict(False, p, f"{objection[1]} ({accepted})", refused=objection[0])
        return Verdict(True, p, accepted)
