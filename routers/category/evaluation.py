"""Accuracy, macro-F1, fallback rate and single-prompt latency of a trained routing model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder
    from coe.evaluation.data import LabelledPrompts


class RouterEvalResult(BaseModel):
    n: int
    labels: list[str]
    accuracy: float
    accuracy_ci95: tuple[float, float] = Field(
        description="Wilson 95% interval of the accuracy: whether a difference or a target is more than noise"
    )
    macro_f1: float
    per_class_f1: dict[str, float | None] = Field(
        description="None for a label that is neither in the data nor predicted (left out of macro_f1)"
    )
    ece: float = Field(
        description="expected calibration error of the top probability (15 equal-width bins): how far "
        "'p = 0.8' is from being right 80% of the time, which min_confidence relies on"
    )
    min_confidence: float
    fallback_rate: float
    accuracy_routed: float | None  # on the prompts that did not fall back
    latency_ms_p50: float
    latency_ms_p99: float
    latency_prompts: int
    confusion: list[list[int]]  # rows: true label, columns: predicted, order of ``labels``
    classifier: str | None = None
    encoder: str | None = None
    backend: str | None = None
    artefact_load_ms: float | None = None
    stages: dict[str, int] = Field(default_factory=dict, description="cascade: prompts decided per stage")
    train_overlap: int | None = Field(
        None,
        description="prompts whose exact text the artefact was trained on (None: the artefact predates "
        "this record); above 0, accuracy is not a held-out estimate",
    )


def macro_f1(confusion: np.ndarray) -> tuple[float, list[float | None]]:
    """Macro-F1 over the labels that occur in the data or in the predictions, as scikit-learn does.

    Why not over every label the router knows: a label with no prompt and no prediction has no F1,
    and counting it as 0 capped router_mix's validation side (no `reasoning` prompt) at 7/8 however
    good the router. Such labels get None per class."""
    import numpy as np

    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    f1 = 2 * tp / np.maximum(predicted + actual, 1)  # = 2PR / (P + R)
    present = (predicted + actual) > 0
    macro = float(f1[present].mean()) if present.any() else 0.0
    return macro, [float(x) if seen else None for x, seen in zip(f1, present, strict=True)]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike the normal approximation, it stays inside
    [0, 1] and is honest near 100%, which is where router accuracies live."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5)
    return round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)


def predict(model: Any, embedder: Embedder | None, texts: list[str]) -> np.ndarray:
    probs: np.ndarray = model.predict(texts, embedder).probs
    return probs


def single_prompt_latency_ms(
    model: Any, embedder: Embedder | None, texts: list[str], n: int = 200
) -> list[float]:
    """What one request pays: classify one prompt (encoding included). Model load is excluded.

    The ``n`` prompts are spread evenly over the file: data files are often sorted by source, and the
    first hundred rows of one source say little about the latency of the mix."""
    texts = texts[:: max(1, len(texts) // max(n, 1))][:n]
    model.warm(embedder)  # load every encoder, even those the first prompts would not reach
    for text in texts[:3]:  # fill caches
        predict(model, embedder, [text])
    out = []
    for text in texts:
        t0 = time.perf_counter()
        predict(model, embedder, [text])
        out.append((time.perf_counter() - t0) * 1000)
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their share of prompts
    (Guo et al., 2017). 0 is perfect; a router whose probabilities are all 1.0 scores its error rate."""
    import numpy as np

    if len(confidence) == 0:
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in np.unique(which):
        inside = which == b
        gap += inside.mean() * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return round(gap, 6)


def evaluate(
    data: LabelledPrompts,
    labels: list[str],
    probs: np.ndarray,
    latencies_ms: list[float],
    min_confidence: float = 0.0,
) -> RouterEvalResult:
    import numpy as np

    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in data.labels])
    pred = probs.argmax(axis=1)
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    f1, per_class = macro_f1(confusion)
    routed = probs.max(axis=1) >= min_confidence
    lat = np.array(latencies_ms) if latencies_ms else np.array([float("nan")])
    correct = int((pred == y).sum())
    return RouterEvalResult(
        n=len(y),
        labels=labels,
        accuracy=correct / max(len(y), 1),
        accuracy_ci95=wilson_interval(correct, len(y)),
        macro_f1=f1,
        per_class_f1=dict(zip(labels, per_class, strict=True)),
        ece=expected_calibration_error(probs.max(axis=1), pred == y),
        min_confidence=min_confidence,
        fallback_rate=float(1 - routed.mean()),
        accuracy_routed=float((pred[routed] == y[routed]).mean()) if routed.any() else None,
        latency_ms_p50=float(np.percentile(lat, 50)),
        latency_ms_p99=float(np.percentile(lat, 99)),
        latency_prompts=len(latencies_ms),
        confusion=confusion.tolist(),
    )


def plot_confusion(result: RouterEvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array(result.confusion, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(result.labels), 0.8 + 0.7 * len(result.labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(result.labels)), result.labels, rotation=45, ha="right")
    ax.set_yticks(range(len(result.labels)), result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(m)):
        for j in range(len(m)):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(f"accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibrate_threshold(
    correct: np.ndarray, confidence: np.ndarray, target_accuracy: float | None, target_fallback: float | None
) -> float:
    """Smallest min_confidence reaching ``target_accuracy`` on routed prompts, or the one whose fallback
    rate is closest to ``target_fallback`` without exceeding it. Returns 0.0 when no threshold is needed."""
    import numpy as np

    candidates = np.concatenate([[0.0], np.unique(confidence)])
    if target_accuracy is not None:
        for t in candidates:
            routed = confidence >= t
            if routed.any() and correct[routed].mean() >= target_accuracy:
                return float(t)
        return float(candidates[-1])
    assert target_fallback is not None
    best = 0.0
    for t in candidates:
        if (confidence < t).mean() <= target_fallback:
            best = float(t)
    return best
