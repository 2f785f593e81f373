"""What the category router asks: texts in, p(category) out, whatever features that takes.

Three shapes share ``predict(texts, embedder) -> Prediction``:

* ``EmbeddingModel``: a vector classifier (centroid, knn, logreg) on sentence embeddings;
* ``TextModel``: the TF-IDF classifier, which needs no encoder;
* ``CascadeModel``: TF-IDF first; only when its top probability is below ``threshold`` is the prompt
  embedded, and the distributions are combined (weighted geometric mean, renormalised). Optional
  ``extras`` are kNN members on further encoders (``ExtraMember``), asked with the main one.

Why a cascade: TF-IDF alone is sure of most benchmark prompts and nearly always right on those, at
about a millisecond; the encoder, much slower on long prompts, is paid only for the rest, and
combining both scores better than either alone (docs/benchmarks).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
from pydantic import BaseModel

from routers.category.calibration import ScopeFloor
from routers.category.classifiers import CLASSIFIERS, Classifier, softmax
from routers.category.text_classifier import TfidfClassifier

if TYPE_CHECKING:
    from coe.encoding.embedder import Embedder


class InScope(NamedTuple):
    """What the scope check reads of one prompt."""

    closeness: float  # its highest similarity to a category centroid
    unknown_words: list[str]  # its words, when the encoder knows none of them


@dataclass
class Prediction:
    probs: np.ndarray  # (n, classes), rows sum to 1
    scores: np.ndarray  # (n, classes): cosines (centroid, knn) or logits, shown as "similarities"
    stages: list[str] = field(default_factory=list)  # per prompt: which features decided
    # per prompt, for a cascade: each member's own top category and its probability, so a trace shows
    # who agreed (the combined distribution alone hides a member that was outvoted)
    members: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    # per prompt, when the model has an active scope floor: what the scope check reads of it
    scope: list[InScope] | None = None


def _need(embedder: Embedder | None) -> Embedder:
    if embedder is None:
        raise ValueError("this router model needs a sentence encoder")
    return embedder


def combine(
    p_fast: np.ndarray,
    p_slow: np.ndarray,
    weight: float,
    extras: Sequence[tuple[np.ndarray, float]] = (),
) -> np.ndarray:
    """The cascade's distributions as one: a weighted geometric mean, renormalised.

    ``weight`` is the encoders' share against TF-IDF; ``extras`` are (probabilities, share) of further
    encoder members, each share relative to ``p_slow``'s 1, so the encoders together keep ``weight``
    and the overall sharpness (hence calibration) stays that of the two-member cascade."""
    slow, total = np.log(p_slow + 1e-9), 1.0
    for p, share in extras:
        slow, total = slow + share * np.log(p + 1e-9), total + share
    return softmax((1 - weight) * np.log(p_fast + 1e-9) + weight * slow / total)


class EmbeddingModel:
    """``scope``: the out-of-scope floor of a model fitted on a registry's examples (an artefact has
    none); its closeness comes from the same vectors, so it costs one small matrix product."""

    needs_embedder: ClassVar[bool] = True

    def __init__(
        self, classifier: Classifier, max_tokens: int | None = None, scope: ScopeFloor | None = None
    ) -> None:
        self.classifier = classifier
        self.kind = classifier.kind
        self.max_tokens = max_tokens
        self.scope = scope

    def predict(self, texts: Sequence[str], embedder: Embedder | None) -> Prediction:
        vectors = _need(embedder).encode(texts, self.max_tokens)
        probs, scores = self.classifier.predict_proba(vectors)
        if self.scope is None or not self.scope.active:
            return Prediction(probs, scores, [self.kind] * len(texts))
        vocabulary = _need(embedder).vocabulary
        scope = [
            InScope(float(c), vocabulary.unknown_words(t) if vocabulary else [])
            for c, t in zip(self.scope.closeness(vectors), texts, strict=True)
        ]
        return Prediction(probs, scores, [self.kind] * len(texts), scope=scope)

    def warm(self, embedder: Embedder | None) -> None:
        """Load the encoder and fill its caches, so the first routed prompt pays no load."""
        self.predict(["warm up"], embedder)

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

    def warm(self, embedder: Embedder | None = None) -> None:
        """Nothing to load."""

    def params(self) -> dict[str, Any]:
        return self.classifier.params()

    def arrays(self) -> dict[str, np.ndarray]:
        return self.classifier.arrays()


class EncoderRef(BaseModel):
    """Which encoder an extra member's vectors come from, as its artefact records it."""

    space: str  # coe_encoder.json's identity: the folder must still hold exactly these weights
    path: str  # the folder; relative paths are relative to the artefact's own folder
    backend: str


@dataclass
class ExtraMember:
    """A classifier on another encoder's vectors, asked together with the cascade's main one.

    Why: two MiniLMs fine-tuned on different labels (the 92 source labels and the 8 domains) err on
    different prompts, and combining their neighbour votes fixed more of the example router's errors
    than any classifier change did. Its encoder is resolved and checked when the artefact loads (a
    missing or retrained folder, or one whose weights file is not the one its header records, fails
    there, naming it) but loaded on its first unsure prompt, with
    the main embedder's thread count so that latency settings apply to both."""

    model: EmbeddingModel
    encoder: EncoderRef
    folder: Path
    share: float  # its weight relative to the main encoder member's 1
    embedder: Embedder | None = field(default=None, repr=False)  # loaded on first use
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # routes run in threads

    @classmethod
    def resolve(cls, model: EmbeddingModel, encoder: EncoderRef, share: float, base: Path) -> ExtraMember:
        from coe.encoding.files import resolve_encoder_files, resolve_recorded
        from coe.errors import ModelNotFoundError

        folder = resolve_recorded(encoder.path, base)
        try:
            files = resolve_encoder_files("extra", encoder.backend, str(folder))
        except ModelNotFoundError as exc:  # gone, or its weights are not the ones its header names
            raise ValueError(
                f"its extra encoder {'cannot be used' if folder.exists() else 'is missing'}: {exc}"
            ) from None
        if files.identity != encoder.space:  # read from the folder's coe_encoder.json while resolving
            raise ValueError(
                f"its extra encoder {files.folder} holds {files.identity!r}, not the {encoder.space!r} "
                "it was trained with; retrain with `coe train-router`"
            )
        return cls(model, encoder, files.folder, share)

    @property
    def name(self) -> str:
        """How traces name it: its classifier and encoder folder, e.g. ``knn@dom_encoder``."""
        return f"{self.model.kind}@{self.folder.name}"

    def predict(self, texts: Sequence[str], like: Embedder | None) -> Prediction:
        return self.model.predict(texts, self._embedder(like))

    def warm(self, like: Embedder | None) -> None:
        self.model.warm(self._embedder(like))

    def _embedder(self, like: Embedder | None) -> Embedder:
        with self._lock:
            if self.embedder is None:
                from coe.encoding.embedder import Embedder

                threads = like.threads if like is not None else None
                self.embedder = Embedder(path=str(self.folder), backend=self.encoder.backend, threads=threads)
            return self.embedder


class CascadeModel:
    kind: ClassVar[str] = "cascade"
    needs_embedder: ClassVar[bool] = True

    def __init__(
        self,
        fast: TextModel,
        slow: EmbeddingModel,
        weight: float,
        threshold: float,
        extras: Sequence[ExtraMember] = (),
    ) -> None:
        self.fast = fast
        self.slow = slow
        self.weight = weight  # of the embedding models in the combination
        self.threshold = threshold  # fast top probability at or above which the encoders are skipped
        self.extras = list(extras)
        self._executor: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def predict(self, texts: Sequence[str], embedder: Embedder | None) -> Prediction:
        first = self.fast.predict(texts)
        unsure = np.flatnonzero(first.probs.max(axis=1) < self.threshold)
        probs, scores, stages = first.probs.copy(), first.scores.copy(), list(first.stages)
        members = [{"tfidf": self._top(p)} for p in first.probs]
        if len(unsure):
            asked = [texts[int(i)] for i in unsure]
            pending = [self._pool().submit(m.predict, asked, embedder) for m in self.extras]
            second = self.slow.predict(asked, embedder)
            extras = [(f.result().probs, m.share) for f, m in zip(pending, self.extras, strict=True)]
            probs[unsure] = combine(first.probs[unsure], second.probs, self.weight, extras)
            scores[unsure] = second.scores
            stage = "+".join(["tfidf", self.slow.kind, *(m.model.kind for m in self.extras)])
            for row, i in enumerate(unsure):
                stages[i] = stage
                members[i][self.slow.kind] = self._top(second.probs[row])
                for m, (p, _) in zip(self.extras, extras, strict=True):
                    members[i][m.name] = self._top(p[row])
        return Prediction(probs, scores, stages, members)

    def _top(self, p: np.ndarray) -> dict[str, Any]:
        k = int(p.argmax())
        return {"category": self.fast.classifier.labels[k], "p": round(float(p[k]), 4)}

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(len(self.extras), thread_name_prefix="coe-extra-encoder")
            return self._executor

    def warm(self, embedder: Embedder | None) -> None:
        """Load every encoder now: the fast path needs none, so a sure first prompt would not."""
        self.slow.warm(embedder)
        for m in self.extras:
            m.warm(embedder)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "weight": self.weight,
            "threshold": self.threshold,
            "fast": self.fast.params(),
            "slow": {"kind": self.slow.kind, **self.slow.params()},
        }
        if self.extras:  # absent, not empty, so two-member artefacts keep the header they always had
            params["extras"] = [
                {"kind": m.model.kind, **m.model.params(), "share": m.share, "encoder": dict(m.encoder)}
                for m in self.extras
            ]
        return params

    def arrays(self) -> dict[str, np.ndarray]:
        members: dict[str, TextModel | EmbeddingModel] = {"fast": self.fast, "slow": self.slow}
        members |= {f"extra{i}": m.model for i, m in enumerate(self.extras)}
        return {f"{name}.{k}": v for name, member in members.items() for k, v in member.arrays().items()}


RoutingModel = EmbeddingModel | TextModel | CascadeModel
MODEL_KINDS = (*CLASSIFIERS, "tfidf", "cascade")


def _embedding_model(
    labels: list[str], params: dict[str, Any], arrays: dict[str, np.ndarray], max_tokens: int | None
) -> EmbeddingModel:
    """A cascade member from its params (``kind`` plus the classifier's own) and its arrays."""
    own = {k: v for k, v in params.items() if k not in ("kind", "share", "encoder")}
    return EmbeddingModel(CLASSIFIERS[params["kind"]].from_arrays(labels, own, arrays), max_tokens)


def model_from_arrays(
    kind: str,
    labels: list[str],
    params: dict[str, Any],
    arrays: dict[str, np.ndarray],
    max_tokens: int | None,
    base: Path = Path("."),
) -> RoutingModel:
    """Rebuild a routing model from an artefact's header fields and arrays; ``base`` is the artefact's
    folder, against which a cascade's extra encoders are found."""
    if kind == "tfidf":
        return TextModel(TfidfClassifier.from_arrays(labels, params, arrays))
    if kind == "cascade":

        def member(name: str) -> dict[str, np.ndarray]:
            return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}

        fast = TextModel(TfidfClassifier.from_arrays(labels, params["fast"], member("fast")))
        slow = _embedding_model(labels, params["slow"], member("slow"), max_tokens)
        extras = [
            ExtraMember.resolve(
                _embedding_model(labels, p, member(f"extra{i}"), max_tokens),
                EncoderRef.model_validate(p["encoder"]),
                float(p["share"]),
                base,
            )
            for i, p in enumerate(params.get("extras", []))
        ]
        return CascadeModel(fast, slow, float(params["weight"]), float(params["threshold"]), extras)
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r}; expected one of: {', '.join(MODEL_KINDS)}")
    return EmbeddingModel(CLASSIFIERS[kind].from_arrays(labels, params, arrays), max_tokens)
