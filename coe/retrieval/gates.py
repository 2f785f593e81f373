"""The retrieval gates (ExpertRAG): per prompt, whether to fetch documents.

Five gates, chosen by ``retrieval.gate`` in the registry:

* ``never`` / ``always``: the two baselines every gate is measured against.
* ``category``: the routed category's ``retrieve`` flag (free: the router already decided).
* ``similarity``: search, then keep the documents only if the best cosine passes ``threshold``; it
  saves context tokens and wrong documents, not the search itself.
* ``classifier``: logistic regression on the prompt's embedding (``coe train-gate``); only a prompt
  it sends to retrieval pays for the search.

Why one ``Probe`` per batch: the prompt's embedding is computed at most once and only when a gate or
a search needs it, and a search runs only for the rows that need documents.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coe.config.schema import GateKind
from coe.errors import CoEError
from coe.retrieval.index import DocIndex, Hit

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder

DEFAULT_SIMILARITY_THRESHOLD = 0.5
GATES: tuple[str, ...] = typing.get_args(GateKind)


@dataclass
class Verdict:
    retrieve: bool
    reason: str
    score: float | None = None
    hits: list[Hit] = field(default_factory=list)
    searched: bool = False


class Probe:
    """What gates look at for a batch of prompts, computed on demand."""

    def __init__(
        self,
        texts: Sequence[str],
        categories: Sequence[str | None],
        embedder: Embedder,
        open_index: Any,
        top_k: int,
        vectors: np.ndarray | None = None,
    ) -> None:
        self.texts = list(texts)
        self.categories = list(categories)
        self._embedder = embedder
        self._open_index = open_index
        self._top_k = top_k
        self._vectors = vectors  # precomputed (an evaluation's embedding cache), else encoded on demand

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self._embedder.encode(self.texts)
        return self._vectors

    def search(self, rows: Sequence[int]) -> dict[int, list[Hit]]:
        if not rows:
            return {}
        index: DocIndex = self._open_index()
        found = index.search_vectors(self.vectors()[list(rows)], self._top_k)
        return dict(zip(rows, found, strict=True))


class Gate(Protocol):
    kind: str

    def decide(self, probe: Probe) -> list[Verdict]: ...


class NeverGate:
    kind = "never"

    def decide(self, probe: Probe) -> list[Verdict]:
        return [
            Verdict(False, "gate 'never': the expert answers from its own knowledge") for _ in probe.texts
        ]


class AlwaysGate:
    kind = "always"

    def decide(self, probe: Probe) -> list[Verdict]:
        hits = probe.search(range(len(probe.texts)))
        return [
            Verdict(True, "gate 'always'", hits[i][0].score if hits[i] else None, hits[i], True)
            for i in range(len(probe.texts))
        ]


class CategoryGate:
    kind = "category"

    def __init__(self, flags: dict[str, bool]) -> None:
        self.flags = flags

    def decide(self, probe: Probe) -> list[Verdict]:
        wanted = [i for i, c in enumerate(probe.categories) if c is not None and self.flags.get(c, False)]
        hits = probe.search(wanted)
        verdicts = []
        for i, cat in enumerate(probe.categories):
            if cat is None:
                verdicts.append(Verdict(False, "no routed category (expert pinned or plug-in router)"))
            elif i in hits:
                top = hits[i][0].score if hits[i] else None
                verdicts.append(Verdict(True, f"category {cat!r} has retrieve: true", top, hits[i], True))
            else:
                verdicts.append(Verdict(False, f"category {cat!r} has retrieve: false"))
        return verdicts


class SimilarityGate:
    kind = "similarity"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def decide(self, probe: Probe) -> list[Verdict]:
        hits = probe.search(range(len(probe.texts)))
        verdicts = []
        for i in range(len(probe.texts)):
            best = hits[i][0].score if hits[i] else -1.0
            keep = best >= self.threshold
            sign = ">=" if keep else "<"
            what = "documents kept" if keep else "documents dropped"
            reason = f"best cosine {best:.3f} {sign} threshold {self.threshold:.3f}: {what}"
            verdicts.append(Verdict(keep, reason, best, hits[i] if keep else [], True))
        return verdicts


class ClassifierGate:
    kind = "classifier"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, threshold: float) -> None:
        self.coef = coef
        self.intercept = intercept
        self.threshold = threshold

    def probabilities(self, probe: Probe) -> list[float]:
        from coe.retrieval.gate_model import sigmoid_scores

        return [float(p) for p in sigmoid_scores(probe.vectors(), self.coef, self.intercept)]

    def decide(self, probe: Probe) -> list[Verdict]:
        probs = self.probabilities(probe)
        hits = probe.search([i for i, p in enumerate(probs) if p >= self.threshold])
        verdicts = []
        for i, p in enumerate(probs):
            keep = i in hits
            sign = ">=" if keep else "<"
            reason = f"p(needs retrieval) {p:.3f} {sign} threshold {self.threshold:.3f}"
            verdicts.append(Verdict(keep, reason, round(p, 4), hits.get(i, []), keep))
        return verdicts


def make_gate(
    kind: str,
    *,
    model: Path | None = None,
    threshold: float | None = None,
    flags: dict[str, bool] | None = None,
    embedder: Embedder | None = None,
) -> Gate:
    """Build a gate; ``model`` (from ``coe train-gate``) brings a tuned threshold, and the weights
    for ``classifier``. An explicit ``threshold`` wins over the model's."""
    if kind not in GATES:
        raise CoEError(f"unknown gate {kind!r}; expected one of: {', '.join(GATES)}")
    if kind == "never":
        return NeverGate()
    if kind == "always":
        return AlwaysGate()
    if kind == "category":
        return CategoryGate(flags or {})
    header, arrays = _load_model(model, kind, embedder) if model is not None else (None, {})
    if kind == "similarity":
        tuned = header.threshold if header is not None else DEFAULT_SIMILARITY_THRESHOLD
        return SimilarityGate(tuned if threshold is None else threshold)
    if header is None:
        raise CoEError("gate 'classifier' needs a model from `coe train-gate`")
    chosen = header.threshold if threshold is None else threshold
    return ClassifierGate(arrays["coef"], arrays["intercept"], chosen)


def _load_model(path: Path, kind: str, embedder: Embedder | None) -> tuple[Any, dict[str, Any]]:
    from coe.retrieval.gate_model import GateModelError, load_gate

    header, arrays = load_gate(path)
    if header.kind != kind:
        raise GateModelError(f"{path}: a {header.kind!r} gate, but the gate asked for is {kind!r}")
    if embedder is not None and header.encoder != embedder.space:
        raise GateModelError(
            f"{path}: trained with encoder {header.encoder!r}, but the embedder is {embedder.space!r}"
        )
    return header, arrays


def gate_from_spec(
    spec: str, embedder: Embedder, flags: dict[str, bool] | None = None, threshold: float | None = None
) -> Gate:
    """``coe eval gate --gate``: a gate kind, or the path of a gate file (its kind is in its header)."""
    if spec in GATES:
        return make_gate(spec, flags=flags, threshold=threshold, embedder=embedder)
    from coe.retrieval.gate_model import load_gate

    if not Path(spec).exists():
        raise CoEError(f"gate {spec!r} is neither a gate kind ({', '.join(GATES)}) nor a gate file")
    header, _ = load_gate(Path(spec))
    return make_gate(header.kind, model=Path(spec), threshold=threshold, embedder=embedder)
