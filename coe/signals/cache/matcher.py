"""When two wordings of a last user turn may share an answer.

Three steps, cheapest first: the lexical guard (``features.guard``: the same numbers, dates and
negation, whatever the cosine), a cosine floor on the router's own embeddings, then a logistic
verifier on cheap pair features (``features.FEATURES``) whose threshold was chosen for precision.
The verifier is a handful of floats in the same no-pickle ``.npz`` format as the router's artefacts,
and it names the encoder space its cosines came from: cosines of another encoder mean other things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coe.data.npz import read_npz, write_npz
from coe.signals.cache.features import FEATURES, guard, pair_features

SHIPPED = Path(__file__).with_name("verifier.npz")
FORMAT = "coe-cache-verifier/1"


@dataclass
class Verifier:
    weights: np.ndarray  # over the standardised FEATURES
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    threshold: float  # chosen on the training pairs for the target precision
    encoder: str  # the embedding space of the cosines it was fitted on
    trained_on: dict[str, object]

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
        )


@dataclass
class Verdict:
    hit: bool
    probability: float | None
    reason: str


class Matcher:
    """``decide(cosine, new, old)``: may the answer to ``old`` be replayed for ``new``?"""

    def __init__(self, verifier: Verifier | None, min_cosine: float, threshold: float | None = None) -> None:
        self.verifier = verifier
        self.min_cosine = min_cosine
        self.threshold = threshold if threshold is not None else (verifier.threshold if verifier else None)

    def decide(self, cosine: float, new: str, old: str) -> Verdict:
        objection = guard(new, old)
        if objection is not None:
            return Verdict(False, None, objection)
        if cosine < self.min_cosine:
            return Verdict(False, None, f"cosine {cosine:.3f} < min_cosine {self.min_cosine:.2f}")
        if self.verifier is None or self.threshold is None:
            return Verdict(True, None, f"cosine {cosine:.3f} >= min_cosine {self.min_cosine:.2f}")
        p = float(self.verifier.probability(pair_features(cosine, new, old))[0])
        if p < self.threshold:
            return Verdict(False, p, f"verifier p={p:.3f} < threshold {self.threshold:.3f}")
        return Verdict(True, p, f"verifier p={p:.3f} >= threshold {self.threshold:.3f}")


def fit_verifier(
    features: np.ndarray,
    labels: np.ndarray,
    allowed: np.ndarray,
    encoder: str,
    target_precision: float,
    trained_on: dict[str, object],
    steps: int = 4000,
) -> Verifier:
    """Logistic regression (plain gradient descent, L2 1e-3) on the pairs the guard lets through;
    the threshold is the lowest at which precision over all training pairs reaches the target."""
    x = features[allowed]
    y = labels[allowed].astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    w = np.zeros(z.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) / len(y) + 1e-3 * w)
        b -= 0.5 * float(np.mean(p - y))
    probs = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    threshold = 1.0
    for t in np.round(np.arange(0.5, 1.0, 0.005), 3):
        chosen = probs >= t
        if chosen.sum() >= 10 and y[chosen].mean() >= target_precision:
            threshold = float(t)
            break
    return Verifier(w, b, mean, scale, threshold, encoder, trained_on)
