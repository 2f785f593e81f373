"""Two-step routing (Composition of Experts, arXiv 2412.01868): p(category | prompt), then a
category -> expert map, with a generalist fallback when the router is unsure.

Where p(category | prompt) comes from (``router.classifier``):

* ``centroid`` / ``knn`` / ``logreg`` on sentence embeddings, or ``tfidf`` on character n-grams,
  fitted on the YAML's examples at start-up;
* ``llm``: an expert picks the category (``routers.category.llm_classifier``); routing without generation
  (``coe route``, the batch planner) calls no expert and uses the centroid on the examples instead,
  and says so in the reason;
* ``router.model``: an artefact written by ``coe train-router`` (any of the above but llm, or the
  tfidf -> kNN ``cascade``), trained on thousands of labelled prompts.

Every classifier returns calibrated probabilities, so ``min_confidence`` means what it says. A
classifier fitted on the examples also has an out-of-scope floor (``fallback.min_similarity``,
routers.category.calibration): a prompt close to no category falls back whatever its probabilities.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coe.config.routing import settings_of
from coe.encoding.embedder import Embedder, shared_embedder
from coe.encoding.files import resolve_recorded
from coe.errors import ModelNotFoundError
from coe.types import Request, RouteDecision
from routers.category.calibration import FITS, ScopeFloor, fingerprint
from routers.category.classifiers import CentroidClassifier, fit_classifier
from routers.category.config import CategoryRouterConfig
from routers.category.model import EmbeddingModel, InScope, Prediction, RoutingModel, TextModel
from routers.category.text_classifier import TfidfClassifier

__all__ = ["CategoryRouter", "CentroidClassifier"]

if TYPE_CHECKING:
    from coe.config import CoEConfig, EmbedderConfig
    from coe.protocols import CallExpert
    from routers.category.llm_classifier import LLMClassifier


class CategoryRouter:
    """``route`` classifies the whole batch in one call (one encoder pass when one is needed)."""

    name = "category"
    Config = CategoryRouterConfig

    def __init__(
        self,
        cfg: CategoryRouterConfig,
        embedder: Embedder | None,
        model_path: Path | None = None,
        embedder_cfg: EmbedderConfig | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self._embedder = embedder
        self._embedder_cfg = embedder_cfg
        self._base_dir = base_dir
        self.llm: LLMClassifier | None = None
        self.model: RoutingModel
        if model_path is not None:
            self.model, self.labels = self._load_artefact(model_path)
            return
        self.labels = list(cfg.categories)
        texts: list[str] = []
        y: list[int] = []
        prompts: list[bool] = []  # an example, not a description: held out to calibrate
        for k, spec in enumerate(cfg.categories.values()):
            rows = ([(spec.description, False)] if spec.description else []) + [
                (e, True) for e in spec.examples
            ]
            for text, prompt in rows:
                texts.append(text)
                y.append(k)
                prompts.append(prompt)
        kind = cfg.classifier
        if kind == "llm":
            from routers.category.llm_classifier import LLMClassifier

            assert cfg.llm is not None  # checked by the config loader
            self.llm = LLMClassifier(cfg.llm, cfg.categories, cfg.temperature)
            kind = "centroid"  # what `route` (no generation) uses
        if kind == "tfidf":
            self.model = TextModel(TfidfClassifier.fit(texts, y, self.labels))
        else:
            self.model = self._fit_on_examples(kind, texts, y, prompts)

    def _fit_on_examples(
        self, kind: str, texts: list[str], y: list[int], prompts: list[bool]
    ) -> EmbeddingModel:
        """Encode the examples, fit the classifier and the scope floor; cached by everything the fit
        reads, so reloading the same registry costs neither an encoder pass nor a refit."""
        cfg = self.cfg
        floor = cfg.fallback.min_similarity if cfg.fallback else None
        key = fingerprint(
            kind,
            cfg.temperature,
            cfg.max_tokens,
            floor,
            self.embedder.cache_key,
            self.labels,
            y,
            prompts,
            texts=texts,
        )

        def fit() -> EmbeddingModel:
            vectors = self.embedder.encode(texts, cfg.max_tokens)
            held_out = np.asarray(prompts)
            classifier = fit_classifier(kind, vectors, y, self.labels, cfg.temperature, held_out)
            scope = ScopeFloor.fit(vectors, np.asarray(y), len(self.labels), floor)
            return EmbeddingModel(classifier, cfg.max_tokens, scope)

        model: EmbeddingModel = FITS.get_or_fit(key, fit)
        return model

    @property
    def embedder(self) -> Embedder:
        """Resolved on first need: a tfidf router never loads (or even resolves) an encoder."""
        if self._embedder is None:
            if self._embedder_cfg is None:
                raise ModelNotFoundError("this router needs a sentence encoder; none was configured")
            self._embedder = shared_embedder(self._embedder_cfg, self._base_dir)
        return self._embedder

    @property
    def classifier(self) -> Any:
        """The fitted classifier behind the model (its temperature, centroids... for inspection)."""
        return getattr(self.model, "classifier", self.model)

    def _load_artefact(self, path: Path) -> tuple[RoutingModel, list[str]]:
        from routers.category import artefact

        try:
            header, model = artefact.load(path)
        except ValueError as exc:
            raise ModelNotFoundError(str(exc)) from exc
        if header.encoder is not None and header.encoder != self.embedder.space:
            raise ModelNotFoundError(
                f"{path}: trained on {header.encoder!r} embeddings, but embedder is "
                f"{self.embedder.name!r} with backend {self.embedder.backend!r} ({self.embedder.space!r}); "
                + (
                    f"set embedder.path to the fine-tuned encoder "
                    f"{resolve_recorded(header.encoder_path, path.parent)}"
                    if header.encoder_path
                    else "set embedder.model/backend to match"
                )
                + " or retrain with `coe train-router`"
            )
        # Another label set either way is refused: a label without a category has no expert to go to,
        # and a category the artefact never learned would silently never be chosen.
        missing = [label for label in header.labels if label not in self.cfg.categories]
        if missing:
            raise ModelNotFoundError(f"{path}: labels {missing} have no entry in router.categories")
        unknown = [name for name in self.cfg.categories if name not in header.labels]
        if unknown:
            raise ModelNotFoundError(
                f"{path}: router.categories {unknown} are not among the labels it was trained on "
                f"({', '.join(header.labels)}), so it could never pick them: remove them or retrain "
                "with `coe train-router` on data that has them"
            )
        return model, list(header.labels)

    @classmethod
    def from_config(cls, config: CoEConfig) -> CategoryRouter:
        cfg = settings_of(config.router, CategoryRouterConfig)
        model = config.resolve_path(cfg.model) if cfg.model else None
        return cls(cfg, None, model, config.embedder, config.base_dir)

    def warm(self) -> None:
        """Load the encoders the model needs (an artefact's load lazily; a cascade may skip them for
        many prompts, so the first unsure one would pay)."""
        self.model.warm(self.embedder if self.model.needs_embedder else None)

    def _predict(self, texts: list[str]) -> Prediction:
        embedder = self.embedder if self.model.needs_embedder else None
        return self.model.predict(texts, embedder)

    def prompt_embedding(self, request: Request) -> tuple[np.ndarray, str, str] | None:
        """(vector, its exact space, the encoder space) the router computed for this request in the
        current request scope, or None when it encoded nothing (tfidf, a cascade that stopped at its
        first stage): the semantic cache reuses it instead of encoding the prompt again."""
        if self._embedder is None or not self.model.needs_embedder:
            return None
        encoding = getattr(self.model, "slow", self.model)  # a cascade encodes with its second stage
        max_tokens = getattr(encoding, "max_tokens", None)
        found = self._embedder.peek([request.text], max_tokens)
        if found is None:
            return None
        space = self._embedder.space
        return found[0], f"{space}@{max_tokens or self._embedder.max_tokens or 'full'}", space

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]:
        if not requests:
            return []
        pred = self._predict([r.text for r in requests])
        note = None
        if self.llm is not None:
            note = "no generation, so no llm call: centroid on the examples"
        members = pred.members or [{}] * len(requests)
        scope: Sequence[InScope | None] = pred.scope or [None] * len(requests)
        return [
            self._decide(p, s, {"classifier": stage, **({"members": m} if m else {})}, note, c)
            for p, s, stage, m, c in zip(pred.probs, pred.scores, pred.stages, members, scope, strict=True)
        ]

    @property
    def asks_experts(self) -> bool:
        """Whether routing calls an expert (``classifier: llm``); if not, the pipeline batches
        ``route`` across concurrent requests (coe.pipeline.batching)."""
        return self.llm is not None

    async def aroute(self, requests: Sequence[Request], call_expert: CallExpert) -> list[RouteDecision]:
        """With ``classifier: llm``, ask the classifying expert; if it fails, route without it."""
        if self.llm is None or not requests:
            return await asyncio.to_thread(self.route, requests)
        from routers.category.llm_classifier import LLMClassifierError

        try:
            probs, logprobs, from_model = await self.llm.predict([r.text for r in requests], call_expert)
        except (LLMClassifierError, TimeoutError) as exc:
            decisions = await asyncio.to_thread(self.route, requests)
            for d in decisions:
                d.reason = f"llm classifier failed ({exc}); {d.reason}"
                d.details["llm_error"] = str(exc)
            return decisions
        details = self.llm.describe()
        return [
            self._decide(
                p,
                z,
                {**details, "classifier": "llm", "logprobs": bool(ok)},
                None if ok else f"expert {self.llm.cfg.expert!r} gave no log-probabilities: a smoothed vote",
            )
            for p, z, ok in zip(probs, logprobs, from_model, strict=True)
        ]

    def _out_of_scope(self, seen: InScope | None, details: dict[str, Any]) -> str | None:
        """Why the prompt is out of every category's scope, or None (no floor, or in scope)."""
        scope = getattr(self.model, "scope", None)
        if seen is None or scope is None or not scope.active:
            return None
        details["closeness"] = round(seen.closeness, 4)
        details["floor"] = round(scope.floor, 4)
        if seen.unknown_words:
            details["unknown_words"] = seen.unknown_words
            return f"no word of the prompt is known to the encoder ({', '.join(seen.unknown_words[:5])})"
        if seen.closeness >= scope.floor:
            return None
        origin = "fitted on the examples" if scope.fitted else "fallback.min_similarity"
        return (
            f"no category is close: top similarity {seen.closeness:.2f} < floor {scope.floor:.2f} ({origin})"
        )

    def _decide(
        self,
        probs: np.ndarray,
        sims: np.ndarray,
        details: dict[str, Any],
        note: str | None,
        seen: InScope | None = None,
    ) -> RouteDecision:
        order = np.argsort(-probs)
        top = self.labels[order[0]]
        confidence = float(probs[order[0]])
        expert = self.cfg.categories[top].expert
        runner_up = self.cfg.categories[self.labels[order[1]]].expert if len(order) > 1 else expert
        fallback = self.cfg.fallback
        scores = {self.labels[i]: round(float(probs[i]), 4) for i in order}
        similarities = {self.labels[i]: round(float(sims[i]), 4) for i in order}
        suffix = f" ({note})" if note else ""
        far = self._out_of_scope(seen, details) if fallback is not None else None
        if fallback is not None and (far or confidence < fallback.min_confidence):
            why = far or (
                f"top category {top!r} has p={confidence:.2f} < min_confidence {fallback.min_confidence:.2f}"
            )
            return RouteDecision(
                router=self.name,
                experts=_unique([fallback.expert, expert]),
                category=top,
                confidence=confidence,
                scores=scores,
                similarities=similarities,
                fallback=True,
                reason=f"{why}: fallback expert {fallback.expert!r}{suffix}",
                details=details,
            )
        threshold = f" >= min_confidence {fallback.min_confidence:.2f}" if fallback else ""
        return RouteDecision(
            router=self.name,
            experts=_unique([expert, runner_up] + ([fallback.expert] if fallback else [])),
            category=top,
            confidence=confidence,
            scores=scores,
            similarities=similarities,
            reason=f"category {top!r} (p={confidence:.2f}{threshold}) maps to expert {expert!r}{suffix}",
            details=details,
        )


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
