"""Train a routing model on labelled prompts and write the artefact ``CategoryRouter`` loads.

Embeddings go through the on-disk cache of ``coe.encoding.cache`` (keyed by encoder,
backend, truncation and the exact text), so retraining with another classifier, or the example's
one-command reproduction, does not re-encode thousands of prompts.

The cascade picks its two knobs on a deterministic 15% of the training data (``coe.data.splits.held_out``,
keyed on the text; the share ``coe finetune-encoder`` never trains on, so a fine-tuned encoder's
kNN is judged there on prompts it has not seen):
the weight of the embedding model in the combination (best accuracy), then the lowest fast-path
threshold whose accuracy there is within 0.2 points of always running both. Both members are then
refitted on all the data. With extra encoders (``--extra-encoder``), each adds a kNN member on its
own vectors; their share relative to the main encoder is a third knob, tuned with the weight, and
share 0 (they did not help there) drops them rather than paying for their encoder on every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coe.data.splits import dataset_hash, held_out
from coe.encoding.files import recorded_path
from routers.category.artefact import ArtefactHeader, save
from routers.category.classifiers import fit_classifier
from routers.category.model import (
    CascadeModel,
    EmbeddingModel,
    EncoderRef,
    ExtraMember,
    RoutingModel,
    TextModel,
    combine,
)
from routers.category.text_classifier import TfidfClassifier

if TYPE_CHECKING:
    from coe.encoding.embedder import Embedder
    from coe.evaluation.data import LabelledPrompts

DEFAULT_MAX_TOKENS = 128
CASCADE_SLOW = "knn"
_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6)
_SHARES = (0.0, 0.25, 0.5, 1.0)  # of each extra encoder member, relative to the main one
_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.01)
_TOLERANCE = 0.002


def _embed(embedder: Embedder, texts: list[str], max_tokens: int | None) -> np.ndarray:
    import copy

    from coe.encoding.cache import EmbeddingCache

    if embedder.max_tokens != max_tokens:  # the cache keys on the embedder's own truncation
        embedder = copy.copy(embedder)  # shallow: shares the loaded network
        embedder.max_tokens = max_tokens
    return EmbeddingCache(embedder, max_chars=None).encode(texts)


def tune_cascade(
    p_fast: np.ndarray, p_slow: np.ndarray, y: np.ndarray, p_extras: Sequence[np.ndarray] = ()
) -> tuple[float, float, float, dict[str, float]]:
    """Weight, extra share and threshold from held-out probabilities of all members (the first best
    on ties, so the lighter setting wins); returns them and the evidence (``holdout_accuracy_both``:
    every member asked on every prompt; the key is older than extra members)."""

    def accuracy(w: float, share: float) -> float:
        mixed = combine(p_fast, p_slow, w, [(p, share) for p in p_extras])
        return float((mixed.argmax(1) == y).mean())

    shares = _SHARES if len(p_extras) else (0.0,)
    scored = {(w, share): accuracy(w, share) for w in _WEIGHTS for share in shares}
    best_w, best_share = max(scored, key=lambda k: scored[k])  # max keeps the first of equals
    best_acc = scored[best_w, best_share]
    all_members = combine(p_fast, p_slow, best_w, [(p, best_share) for p in p_extras]).argmax(1)
    chosen, chosen_acc, skip = 1.01, best_acc, 0.0
    for t in _THRESHOLDS:
        sure = p_fast.max(1) >= t
        acc = float((np.where(sure, p_fast.argmax(1), all_members) == y).mean())
        if acc >= best_acc - _TOLERANCE:
            chosen, chosen_acc, skip = t, acc, float(sure.mean())
            break
    evidence = {"holdout_accuracy_both": best_acc, "holdout_accuracy": chosen_acc, "holdout_fast_share": skip}
    if len(p_extras):
        evidence["holdout_accuracy_without_extras"] = max(v for (_, s), v in scored.items() if s == 0.0)
        evidence["extra_share"] = best_share
    return best_w, best_share, chosen, evidence


def fit_model(
    kind: str,
    texts: list[str],
    y: np.ndarray,
    labels: list[str],
    embedder: Embedder | None,
    max_tokens: int | None,
    extra_embedders: Sequence[Embedder] = (),
    out_dir: Path = Path("."),
) -> tuple[RoutingModel, dict[str, float]]:
    """``extra_embedders`` (cascade only): further fine-tuned encoders; ``out_dir`` is the artefact's
    folder (see ``coe.encoding.files.recorded_path``)."""
    if kind == "tfidf":
        return TextModel(TfidfClassifier.fit(texts, y, labels)), {}
    if embedder is None:
        raise ValueError(f"classifier {kind!r} needs a sentence encoder")
    if extra_embedders and kind != "cascade":
        raise ValueError(f"extra encoders are members of a cascade, not of classifier {kind!r}")
    vectors = _embed(embedder, texts, max_tokens)
    if kind != "cascade":
        return EmbeddingModel(fit_classifier(kind, vectors, y, labels), max_tokens), {}
    extra_vectors = [_embed(e, texts, max_tokens) for e in extra_embedders]
    held = np.array(held_out(texts))
    fit_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    evidence: dict[str, float] = {}
    weight, share, threshold = 0.3, 0.5, 0.8
    if len(held_idx) >= 20 and len(set(y[fit_idx].tolist())) == len(labels):
        fast = TfidfClassifier.fit([texts[i] for i in fit_idx], y[fit_idx], labels)
        p_fast, _ = fast.predict_proba_texts([texts[i] for i in held_idx])
        p_slow, *p_extras = (
            fit_classifier(CASCADE_SLOW, v[fit_idx], y[fit_idx], labels).predict_proba(v[held_idx])[0]
            for v in (vectors, *extra_vectors)
        )
        weight, share, threshold, evidence = tune_cascade(p_fast, p_slow, y[held_idx], p_extras)
    extras = [
        ExtraMember(
            EmbeddingModel(fit_classifier(CASCADE_SLOW, v, y, labels), max_tokens),
            EncoderRef(space=e.space, path=recorded_path(e.folder, out_dir), backend=e.backend),
            e.folder,
            share,
            embedder=e,
        )
        for e, v in zip(extra_embedders, extra_vectors, strict=True)
        if share > 0
    ]
    model = CascadeModel(
        TextModel(TfidfClassifier.fit(texts, y, labels)),
        EmbeddingModel(fit_classifier(CASCADE_SLOW, vectors, y, labels), max_tokens),
        weight,
        threshold,
        extras,
    )
    return model, evidence


def train(
    data: LabelledPrompts,
    embedder: Embedder | None,
    kind: str,
    out: Path,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    extra_embedders: Sequence[Embedder] = (),
) -> tuple[ArtefactHeader, RoutingModel]:
    from coe import __version__

    labels = data.classes
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in data.labels])
    model, evidence = fit_model(
        kind, data.texts, y, labels, embedder, max_tokens, extra_embedders, out.parent
    )
    params = model.params()
    if evidence:
        params["tuning"] = evidence
    encoder = embedder if model.needs_embedder else None
    header = ArtefactHeader(
        encoder=encoder.space if encoder else None,
        backend=encoder.backend if encoder else None,
        encoder_path=recorded_path(encoder.folder, out.parent)
        if encoder and encoder.files.identity
        else None,
        max_tokens=max_tokens if encoder else None,
        labels=labels,
        classifier=kind,
        params=params,
        train_size=len(data.texts),
        train_sha256=dataset_hash(data.texts, data.labels),
        created_with=__version__,
    )
    save(out, header, model, data.texts)
    return header, model
