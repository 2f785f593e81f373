"""Logistic regression on character n-gram TF-IDF (``classifier: tfidf``): no encoder at all.

Trained with scikit-learn; prediction is a sparse dot product in numpy (``coe.encoding.char_tfidf``
builds the row in Python), about a millisecond for a typical prompt on one core. Probabilities are
calibrated by the log loss it is trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from coe.encoding.char_tfidf import TFIDF_MAX_CHARS, CharNgramTfidf

if TYPE_CHECKING:
    from routers.category.classifiers import Labels

DEFAULT_C = 10.0


class TfidfClassifier:
    kind: ClassVar[str] = "tfidf"

    def __init__(
        self, labels: list[str], features: CharNgramTfidf, coef_t: np.ndarray, intercept: np.ndarray, c: float
    ) -> None:
        self.labels = labels
        self.features = features
        self.coef_t = np.ascontiguousarray(coef_t, dtype=np.float32)  # (features, classes): rows gather fast
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.c = c

    @classmethod
    def fit(cls, texts: Sequence[str], y: Labels, labels: list[str], c: float = DEFAULT_C) -> TfidfClassifier:
        from routers.category.classifiers import fit_logistic

        features = CharNgramTfidf.fit(texts)
        coef, intercept = fit_logistic(features.transform(texts), y, len(labels), c)
        return cls(labels, features, coef.T, intercept, c)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        out = np.tile(self.intercept.astype(np.float64), (len(texts), 1))
        for i, text in enumerate(texts):
            cols, vals = self.features.transform_one(text)
            if cols:
                out[i] += np.asarray(vals, dtype=np.float32) @ self.coef_t[cols]
        return out

    def predict_proba_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        from routers.category.classifiers import softmax

        z = self.logits(texts)
        return softmax(z), z

    def params(self) -> dict[str, Any]:
        return {"C": self.c, "max_chars": self.features.max_chars}

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.features.arrays(), "coef_t": self.coef_t, "intercept": self.intercept}

    @classmethod
    def from_arrays(
        cls, labels: list[str], params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> TfidfClassifier:
        features = CharNgramTfidf.from_arrays(arrays, int(params.get("max_chars", TFIDF_MAX_CHARS)))
        return cls(labels, features, arrays["coef_t"], arrays["intercept"], float(params["C"]))
