"""Classifiers behind the category router: p(category | embedding), always calibrated.

All share one interface: ``fit(vectors, y, labels)``, ``predict_proba(vectors) -> (probs, scores)``
(scores are what the trace shows as "similarities": cosines for centroid and kNN, logits for logreg),
and ``arrays()`` / ``from_arrays()`` so an artefact stores plain numpy arrays plus a JSON header, never a
pickle. faiss and scikit-learn are imported inside the functions that need them, so ``import coe``
stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from coe.encoding.search import ExactSearch
from routers.category.calibration import PRIORS, map_temperature

# Class indices of the training rows, as a list or an integer array.
Labels = Sequence[int] | np.ndarray


def _normalise(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return probs


class CentroidClassifier:
    """Nearest centroid in a *centred* embedding space.

    Sentence embeddings share a large common component, so a category with diverse examples
    ("general") gets a centroid close to that component and wins prompts it should not. Subtracting
    the mean of the category means before comparing removes it (on router_mix it raises accuracy
    and the general category's recall, and leaves code and math unchanged; docs/benchmarks).
    The softmax temperature is calibrated by leave-one-out on the examples themselves, under a prior
    (routers.category.calibration: a few examples cannot make it extreme).
    """

    kind: ClassVar[str] = "centroid"

    def __init__(
        self, labels: list[str], centroids: np.ndarray, center: np.ndarray, temperature: float
    ) -> None:
        self.labels = labels
        self.centroids = centroids
        self.center = center
        self.temperature = temperature

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        y: Labels,
        labels: list[str],
        temperature: float | None = None,
        held_out: np.ndarray | None = None,
    ) -> CentroidClassifier:
        """``held_out``: which rows are prompts, held out one at a time to fit the temperature (None:
        all). A description is a label, not a prompt: held out, it scored unlike any prompt would."""
        ys = np.asarray(y)
        center = np.stack([vectors[ys == k].mean(axis=0) for k in range(len(labels))]).mean(axis=0)
        z = _normalise(vectors - center)
        sums = np.stack([z[ys == k].sum(axis=0) for k in range(len(labels))])
        counts = np.bincount(ys, minlength=len(labels)).astype(np.float32)
        centroids = _normalise(sums / counts[:, None])
        if temperature is None:
            temperature = _calibrate_centroid(z, ys, sums, counts, _rows(held_out, len(ys)))
        return cls(labels, centroids, center, temperature)

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        # Row by row: a matrix product's last bits depend on how many rows it multiplies, and one
        # prompt's decision must not depend on the prompts routed beside it (coe/pipeline/batching.py).
        rows = _normalise(vectors - self.center)
        cosines = np.zeros((len(rows), len(self.labels)), dtype=np.float64)
        for i, row in enumerate(rows):
            cosines[i] = self.centroids @ row
        return cosines

    def predict_proba(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = self.similarities(vectors)
        return softmax(sims / self.temperature), sims

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "center": self.center}

    @classmethod
    def from_arrays(
        cls, labels: list[str], params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> CentroidClassifier:
        return cls(labels, arrays["centroids"], arrays["center"], float(params["temperature"]))


def _rows(held_out: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if held_out is None else np.asarray(held_out, dtype=bool)


def _calibrate_centroid(
    vectors: np.ndarray, y: np.ndarray, sums: np.ndarray, counts: np.ndarray, held_out: np.ndarray
) -> float:
    """The softmax temperature from leave-one-out on the examples (each against the centroids with
    itself removed); an example alone in its category has no held-out centroid and is skipped."""
    keep = np.flatnonzero(held_out & (counts[y] > 1))
    sims = np.empty((len(keep), len(counts)), dtype=np.float64)
    for row, i in enumerate(keep):
        loo = sums.copy()
        loo[y[i]] -= vectors[i]
        sims[row] = _normalise(loo) @ vectors[i]
    return map_temperature(lambda t: softmax(sims / t), y[keep], "centroid")


class KNNClassifier:
    """Similarity-weighted vote of the k nearest labelled examples (exact inner product, faiss).

    Why kNN: categories such as "general" are unions of unlike topics that one centroid cannot
    describe; neighbours can. Each neighbour votes exp(cos / T) for its class; votes are summed and
    normalised, so the probability is a softmax over neighbours. T is picked by leave-one-out log loss
    (each example's own hit removed) under a prior (routers.category.calibration). The score shown
    per class is its best neighbour's cosine (0 for a class with no neighbour in the top k).
    """

    kind: ClassVar[str] = "knn"

    def __init__(
        self, labels: list[str], vectors: np.ndarray, y: np.ndarray, k: int, temperature: float
    ) -> None:
        self.labels = labels
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.int64)
        self.k = max(1, min(int(k), len(self.y)))
        self.temperature = temperature
        self._exact = ExactSearch(self.vectors)

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        y: Labels,
        labels: list[str],
        temperature: float | None = None,
        k: int = 10,
        held_out: np.ndarray | None = None,
    ) -> KNNClassifier:
        """``held_out``: the prompts among the rows, as for CentroidClassifier.fit."""
        clf = cls(labels, vectors, np.asarray(y), k, temperature or PRIORS["knn"][0])
        rows = np.flatnonzero(_rows(held_out, len(clf.y)))
        if temperature is None and len(clf.y) > 1:
            sims, idx = clf._exact.search(clf.vectors[rows], min(clf.k, len(clf.y) - 1) + 1)
            sims, idx = sims[:, 1:], idx[:, 1:]  # drop each example's own hit
            clf.temperature = map_temperature(lambda t: clf._vote(sims, idx, t), clf.y[rows], "knn")
        return clf

    def _vote(self, sims: np.ndarray, idx: np.ndarray, temperature: float) -> np.ndarray:
        w = np.exp((sims - sims[:, :1]) / temperature)  # shift by the top similarity for stability
        probs = np.zeros((len(sims), len(self.labels)), dtype=np.float64)
        rows = np.repeat(np.arange(len(sims)), sims.shape[1])
        np.add.at(probs, (rows, self.y[idx].ravel()), w.ravel())
        normalised: np.ndarray = probs / probs.sum(axis=1, keepdims=True)
        return normalised

    def predict_proba(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Row by row, as the centroid's similarities: faiss takes another code path from 20 queries on.
        found = [self._exact.search(row[None, :], self.k) for row in vectors]
        sims = np.vstack([f[0] for f in found]) if found else np.zeros((0, self.k), dtype=np.float32)
        idx = np.vstack([f[1] for f in found]) if found else np.zeros((0, self.k), dtype=np.int64)
        best = np.zeros((len(sims), len(self.labels)), dtype=np.float64)
        rows = np.repeat(np.arange(len(sims)), sims.shape[1])
        np.maximum.at(best, (rows, self.y[idx].ravel()), sims.ravel())
        return self._vote(sims, idx, self.temperature), best

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "temperature": self.temperature}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors, "y": self.y}

    @classmethod
    def from_arrays(
        cls, labels: list[str], params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> KNNClassifier:
        return cls(labels, arrays["vectors"], arrays["y"], int(params["k"]), float(params["temperature"]))


def fit_logistic(x: Any, y: Labels, n_labels: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn) as dense (labels, features) weights and biases.

    A label absent from training gets a bias of -1e4 (p ~ 0); with two labels present, sklearn keeps
    one logit, which is softmax([0, z])."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000)
    model.fit(x, np.asarray(y))
    coef = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    intercept = np.full(n_labels, -1e4, dtype=np.float32)
    present = model.classes_.astype(int)
    if len(present) == 2:
        coef[present[0]], intercept[present[0]] = 0.0, 0.0
        coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
    return coef, intercept


class LogRegClassifier:
    """Multinomial logistic regression on the embeddings (scikit-learn at fit time only).

    Why: with a few hundred labelled prompts per class a linear model learns which directions of the
    space matter, which neither a centroid nor a neighbour vote can. Its probabilities are calibrated
    by construction (log loss); prediction is one matrix product, so only numpy is needed after fit.
    """

    kind: ClassVar[str] = "logreg"

    def __init__(self, labels: list[str], coef: np.ndarray, intercept: np.ndarray, c: float) -> None:
        self.labels = labels
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.c = c

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        y: Labels,
        labels: list[str],
        temperature: float | None = None,
        c: float = 10.0,
        held_out: np.ndarray | None = None,
    ) -> LogRegClassifier:
        del temperature, held_out  # trained on log loss: no temperature to fit
        coef, intercept = fit_logistic(vectors, y, len(labels), c)
        return cls(labels, coef, intercept, c)

    def predict_proba(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = vectors.astype(np.float32) @ self.coef.T + self.intercept
        return softmax(logits.astype(np.float64)), logits

    def params(self) -> dict[str, Any]:
        return {"C": self.c}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_arrays(
        cls, labels: list[str], params: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> LogRegClassifier:
        return cls(labels, arrays["coef"], arrays["intercept"], float(params["C"]))


Classifier = CentroidClassifier | KNNClassifier | LogRegClassifier
CLASSIFIERS: dict[str, type[CentroidClassifier] | type[KNNClassifier] | type[LogRegClassifier]] = {
    c.kind: c for c in (CentroidClassifier, KNNClassifier, LogRegClassifier)
}


def fit_classifier(
    kind: str,
    vectors: np.ndarray,
    y: Labels,
    labels: list[str],
    temperature: float | None = None,
    held_out: np.ndarray | None = None,
) -> Classifier:
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r}; expected one of: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[kind].fit(vectors, y, labels, temperature, held_out=held_out)
