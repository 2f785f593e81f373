"""Train a routing model on labelled prompts and write the artefact ``CategoryRouter`` loads.

Embeddings go through the on-disk cache of ``coe.evaluation.embedding_cache`` (keyed by encoder,
backend, truncation and the exact text), so retraining with another classifier, or the example's
one-command reproduction, does not re-encode thousands of prompts.

The cascade picks its two knobs on a deterministic 15% of the training data (``coe.splits.held_out``,
keyed on the text; the share ``coe finetune-encoder`` never trains on, so a fine-tuned encoder's
kNN is judged there on prompts it has not seen):
the weight of the embedding model in the combination (best accuracy), then the lowest fast-path
threshold whose accuracy there is within 0.2 points of always running both. Both members are then
refitted on all the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coe.splits import dataset_hash, held_out
from routers.artefact import ArtefactHeader, save
from routers.classifiers import fit_classifier
from routers.routing_model import CascadeModel, EmbeddingModel, RoutingModel, TextModel, combine
from routers.text_classifier import TfidfClassifier

if TYPE_CHECKING:
    from coe.embedder import Embedder
    from coe.evaluation.data import LabelledPrompts

DEFAULT_MAX_TOKENS = 128
CASCADE_SLOW = "knn"
_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6)
_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.01)
_TOLERANCE = 0.002


def _embed(embedder: Embedder, texts: list[str], max_tokens: int | None) -> np.ndarray:
    import copy

    from coe.evaluation.embedding_cache import EmbeddingCache

    if embedder.max_tokens != max_tokens:  # the cache keys on the embedder's own truncation
        embedder = copy.copy(embedder)  # shallow: shares the loaded network
        embedder.max_tokens = max_tokens
    return EmbeddingCache(embedder, max_chars=None).encode(texts)


def tune_cascade(
    p_fast: np.ndarray, p_slow: np.ndarray, y: np.ndarray
) -> tuple[float, float, dict[str, float]]:
    """Weight and threshold from held-out probabilities of both members; returns them and the evidence."""
    best_w, best_acc = _WEIGHTS[0], -1.0
    for w in _WEIGHTS:
        acc = float((combine(p_fast, p_slow, w).argmax(1) == y).mean())
        if acc > best_acc:
            best_w, best_acc = w, acc
    both = combine(p_fast, p_slow, best_w).argmax(1)
    chosen, chosen_acc, skip = 1.01, best_acc, 0.0
    for t in _THRESHOLDS:
        sure = p_fast.max(1) >= t
        acc = float((np.where(sure, p_fast.argmax(1), both) == y).mean())
        if acc >= best_acc - _TOLERANCE:
            chosen, chosen_acc, skip = t, acc, float(sure.mean())
            break
    evidence = {"holdout_accuracy_both": best_acc, "holdout_accuracy": chosen_acc, "holdout_fast_share": skip}
    return best_w, chosen, evidence


def fit_model(
    kind: str,
    texts: list[str],
    y: np.ndarray,
    labels: list[str],
    embedder: Embedder | None,
    max_tokens: int | None,
) -> tuple[RoutingModel, dict[str, float]]:
    if kind == "tfidf":
        return TextModel(TfidfClassifier.fit(texts, y, labels)), {}
    if embedder is None:
        raise ValueError(f"classifier {kind!r} needs a sentence encoder")
    vectors = _embed(embedder, texts, max_tokens)
    if kind != "cascade":
        return EmbeddingModel(fit_classifier(kind, vectors, y, labels), max_tokens), {}
    held = np.array(held_out(texts))
    fit_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    evidence: dict[str, float] = {}
    weight, threshold = 0.3, 0.8
    if len(held_idx) >= 20 and len(set(y[fit_idx].tolist())) == len(labels):
        fast = TfidfClassifier.fit([texts[i] for i in fit_idx], y[fit_idx], labels)
        slow = fit_classifier(CASCADE_SLOW, vectors[fit_idx], y[fit_idx], labels)
        p_fast, _ = fast.predict_proba_texts([texts[i] for i in held_idx])
        p_slow, _ = slow.predict_proba(vectors[held_idx])
        weight, threshold, evidence = tune_cascade(p_fast, p_slow, y[held_idx])
    model = CascadeModel(
        TextModel(TfidfClassifier.fit(texts, y, labels)),
        EmbeddingModel(fit_classifier(CASCADE_SLOW, vectors, y, labels), max_tokens),
        weight,
        threshold,
    )
    return model, evidence


def train(
    data: LabelledPrompts,
    embedder: Embedder | None,
    kind: str,
    out: Path,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> tuple[ArtefactHeader, RoutingModel]:
    from coe import __version__

    labels = data.classes
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in data.labels])
    model, evidence = fit_model(kind, data.texts, y, labels, embedder, max_tokens)
    params = model.params()
    if evidence:
        params["tuning"] = evidence
    uses_encoder = model.needs_embedder and embedder is not None
    header = ArtefactHeader(
        encoder=embedder.space if uses_encoder else None,
        backend=embedder.backend if uses_encoder else None,
        encoder_path=str(embedder.folder.resolve()) if uses_encoder and embedder.files.identity else None,
        max_tokens=max_tokens if uses_encoder else None,
        labels=labels,
        classifier=kind,
        params=params,
        train_size=len(data.texts),
        train_sha256=dataset_hash(data.texts, data.labels),
        created_with=__version__,
    )
    save(out, header, model, data.texts)
    return header, model
