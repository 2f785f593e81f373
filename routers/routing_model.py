"""What the category router asks: texts in, p(category) out, whatever features that takes.

Three shapes share ``predict(texts, embedder) -> Prediction``:

* ``EmbeddingModel``: a vector classifier (centroid, knn, logreg) on sentence embeddings;
* ``TextModel``: the TF-IDF classifier, which needs no encoder;
* ``CascadeModel``: TF-IDF first; only when its top probability is below ``threshold`` is the prompt
  embedded, and the two distributions are combined (weighted geometric mean, renormalised).

Why a cascade: on our validation split of router_mix, TF-IDF alone is sure (p >= 0.8) of ~80% of
prompts and right on 97.5% of those, at about a millisecond; the encoder, tens of milliseconds on
long prompts, is paid only for the rest, and combining both scores better than either alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from routers.classifiers import CLASSIFIERS, Classifier, softmax
from routers.text_classifier import TfidfClassifier

if TYPE_CHECKING:
    from coe.embedder import Embedder


@dataclass
class Prediction:
    probs: np.ndarray  # (n, classes), rows sum to 1
    scores: np.ndarray  # (n, classes): cosines (centroid, knn) or logits, shown as "similarities"
    stages: list[str] = field(default_factory=list)  # per prompt: which features decided


def _need(embedder: Embedder | None) -> Embedder:
    if embedder is None:
        raise ValueError("this router model needs a sentence encoder")
    return embedder


def combine(p_fast: np.ndarray, p_slow: np.ndarray, weight: float) -> np.ndarray:
    """The cascade's two distributions as one: a weighted geometric mean, renormalised."""
    z = (1 - weight) * np.log(p_fast + 1e-9) + weight * np.log(p_slow + 1e-9)
    return softmax(z)


class EmbeddingModel:
    needs_embedder: ClassVar[bool] = True

    def __init__(self, classifier: Classifier, max_tokens: int | None = None) -> None:
        self.classifier = classifier
        self.kind = classifier.kind
        self.max_tokens = max_tokens

    def predict(self, texts: Sequence[str], embedder: Embedder | None) -> Prediction:
        probs, scores = self.classifier.predict_proba(_need(embedder).encode(texts, self.max_tokens))
        return Prediction(probs, scores, [self.kind] * len(texts))

    def params(self) -> dict[str, Any]:
        return self.classifier.params()

    def arrays(self) -> dict[str, np.ndarray]:
        return self.classifier.arrays()


class TextModel:
    kind: ClassVar[str] = "tfidf"
    needs_embedder: ClassVar[bool] = False

    def __init__(self, classifier: TfidfClassifier) -> None:
        self.classifier = classifier

    def predict(self, texts: Sequence[str], embedder: Embedder | None = None) -> Prediction:
        probs, logits = self.classifier.predict_proba_texts(texts)
        return Prediction(probs, logits, ["tfidf"] * len(texts))

    def params(self) -> dict[str, Any]:
        return self.classifier.params()

    def arrays(self) -> dict[str, np.ndarray]:
        return self.classifier.arrays()


class CascadeModel:
    kind: ClassVar[str] = "cascade"
    needs_embedder: ClassVar[bool] = True

    def __init__(self, fast: TextModel, slow: EmbeddingModel, weight: float, threshold: float) -> None:
        self.fast = fast
        self.slow = slow
        self.weight = weight  # of the embedding model in the combination
        self.threshold = threshold  # fast top probability at or above which the encoder is skipped

    def combine(self, p_fast: np.ndarray, p_slow: np.ndarray) -> np.ndarray:
        return combine(p_fast, p_slow, self.weight)

    def predict(self, texts: Sequence[str], embedder: Embedder | None) -> Prediction:
        first = self.fast.predict(texts)
        unsure = np.flatnonzero(first.probs.max(axis=1) < self.threshold)
        probs, scores, stages = first.probs.copy(), first.scores.copy(), list(first.stages)
        if len(unsure):
            second = self.slow.predict([texts[i] for i in unsure], embedder)
            probs[unsure] = self.combine(first.probs[unsure], second.probs)
            scores[unsure] = second.scores
            for i in unsure:
                stages[i] = f"tfidf+{self.slow.kind}"
        return Prediction(probs, scores, stages)

    def params(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "threshold": self.threshold,
            "fast": self.fast.params(),
            "slow": {"kind": self.slow.kind, **self.slow.params()},
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            **{f"fast.{k}": v for k, v in self.fast.arrays().items()},
            **{f"slow.{k}": v for k, v in self.slow.arrays().items()},
        }


RoutingModel = EmbeddingModel | TextModel | CascadeModel
MODEL_KINDS = (*CLASSIFIERS, "tfidf", "cascade")


def model_from_arrays(
    kind: str,
    labels: list[str],
    params: dict[str, Any],
    arrays: dict[str, np.ndarray],
    max_tokens: int | None,
) -> RoutingModel:
    """Rebuild a routing model from an artefact's header fields and arrays."""
    if kind == "tfidf":
        return TextModel(TfidfClassifier.from_arrays(labels, params, arrays))
    if kind == "cascade":
        sub = {
            p: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(p + ".")}
            for p in ("fast", "slow")
        }
        slow_params = dict(params["slow"])
        slow_kind = slow_params.pop("kind")
        fast = TextModel(TfidfClassifier.from_arrays(labels, params["fast"], sub["fast"]))
        slow = EmbeddingModel(
            CLASSIFIERS[slow_kind].from_arrays(labels, slow_params, sub["slow"]), max_tokens
        )
        return CascadeModel(fast, slow, float(params["weight"]), float(params["threshold"]))
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r}; expected one of: {', '.join(MODEL_KINDS)}")
    return EmbeddingModel(CLASSIFIERS[kind].from_arrays(labels, params, arrays), max_tokens)
