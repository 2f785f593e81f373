"""A trained retrieval gate on disk (``coe train-gate``): plain numpy arrays plus a JSON header.

Two kinds share the format. ``classifier``: logistic regression on the question's embedding, with a
decision threshold chosen on out-of-fold predictions (never on the rows it was fitted on).
``similarity``: no arrays, only the best-cosine threshold tuned on labelled questions against an
index. ``np.load(allow_pickle=False)`` never runs code; the header names the encoder space, so a gate
trained on one encoder is refused by another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from coe.data.npz import read_npz, write_npz
from coe.errors import CoEError
from coe.retrieval.gate_data import GateMetrics, best_threshold, binary_metrics

if TYPE_CHECKING:
    import numpy as np

FORMAT: Literal["coe-retrieval-gate"] = "coe-retrieval-gate"
FORMAT_VERSION = 1
C_GRID = (0.25, 1.0, 4.0, 16.0)


class GateModelError(CoEError):
    """A gate file that cannot be used; the message names the file and why."""


class GateHeader(BaseModel):
    format: Literal["coe-retrieval-gate"] = FORMAT
    format_version: int = FORMAT_VERSION
    kind: Literal["classifier", "similarity"]
    encoder: str = Field(description="embedding space of the vectors (Embedder.space)")
    threshold: float = Field(description="classifier: min probability; similarity: min best cosine")
    label_field: str
    train_size: int
    positives: int
    train_sha256: str
    params: dict[str, Any] = Field(default_factory=dict)
    validation: GateMetrics | None = Field(None, description="out-of-fold metrics at the threshold")


def save_gate(path: Path, header: GateHeader, arrays: dict[str, np.ndarray] | None = None) -> None:
    write_npz(path, header.model_dump_json(), arrays or {})


def load_gate(path: Path) -> tuple[GateHeader, dict[str, np.ndarray]]:
    if not path.is_file():
        raise GateModelError(f"{path}: no such gate file; train one with `coe train-gate`")
    try:
        raw, arrays = read_npz(path, "gate file written by `coe train-gate`")
    except ValueError as exc:
        raise GateModelError(str(exc)) from None
    try:
        if raw.get("format_version") != FORMAT_VERSION:
            raise GateModelError(
                f"{path}: gate format version {raw.get('format_version')}, expected {FORMAT_VERSION}; retrain"
            )
        header = GateHeader.model_validate(raw)
    except (json.JSONDecodeError, AttributeError, ValidationError) as exc:
        raise GateModelError(f"{path}: corrupt gate header ({exc})") from None
    if header.kind == "classifier" and not {"coef", "intercept"} <= set(arrays):
        raise GateModelError(f"{path}: classifier gate without coef/intercept arrays; retrain")
    return header, arrays


def sigmoid_scores(vectors: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    import numpy as np

    z = vectors.astype(np.float64) @ coef.astype(np.float64) + float(intercept.reshape(-1)[0])
    return 1.0 / (1.0 + np.exp(-z))


def fit_classifier(
    vectors: np.ndarray, labels: Sequence[bool], folds: int = 5, seed: int = 0
) -> tuple[dict[str, np.ndarray], float, dict[str, Any], GateMetrics]:
    """Logistic regression; C and the threshold are chosen on out-of-fold probabilities.

    Returns the arrays, the threshold, the parameters and the out-of-fold metrics at the threshold."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels, dtype=int)
    if len(set(y.tolist())) < 2:
        raise GateModelError(
            "the training data needs both labels (some questions that need retrieval, some not)"
        )
    folds = max(2, min(folds, int(np.bincount(y).min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    best: tuple[float, float, np.ndarray] | None = None
    for c in C_GRID:
        oof = np.zeros(len(y))
        for train, test in splitter.split(vectors, y):
            model = LogisticRegression(C=c, max_iter=2000).fit(vectors[train], y[train])
            oof[test] = model.predict_proba(vectors[test])[:, 1]
        loss = float(log_loss(y, oof))
        if best is None or loss < best[1]:
            best = (c, loss, oof)
    assert best is not None
    c, loss, oof = best
    threshold = best_threshold(oof.tolist(), [bool(v) for v in y])
    validation = binary_metrics([bool(p >= threshold) for p in oof], [bool(v) for v in y])
    model = LogisticRegression(C=c, max_iter=2000).fit(vectors, y)
    arrays = {
        "coef": model.coef_[0].astype(np.float32),
        "intercept": model.intercept_.astype(np.float32),
    }
    return arrays, threshold, {"C": c, "folds": folds, "oof_log_loss": round(loss, 4)}, validation
