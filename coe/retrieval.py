"""Retrieval gating (ExpertRAG): per prompt, decide whether to fetch documents, and inject them.

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

import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coe.errors import CoEError
from coe.index import DocIndex, Hit
from coe.types import Message, Request, RetrievalTrace, RouteDecision

if TYPE_CHECKING:
    import numpy as np

    from coe.config import CoEConfig, RetrievalConfig
    from coe.embedder import Embedder

log = logging.getLogger(__name__)
DEFAULT_SIMILARITY_THRESHOLD = 0.5
_PLACEHOLDER = re.compile(r"\{(documents|question|first_id)\}")
GATES = ("never", "always", "category", "similarity", "classifier")
# What may go wrong while retrieving; the request is then answered without documents.
RETRIEVAL_FAILURES = (CoEError, OSError, RuntimeError, sqlite3.Error)


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
        from coe.gate_model import sigmoid_scores

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
    from coe.gate_model import GateModelError, load_gate

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
    from coe.gate_model import load_gate

    if not Path(spec).exists():
        raise CoEError(f"gate {spec!r} is neither a gate kind ({', '.join(GATES)}) nor a gate file")
    header, _ = load_gate(Path(spec))
    return make_gate(header.kind, model=Path(spec), threshold=threshold, embedder=embedder)


class Retriever:
    """The registry's gate and index, built on first use; ``run`` never raises for a failed retrieval."""

    def __init__(self, config: CoEConfig) -> None:
        assert config.retrieval is not None
        self.config = config
        self.cfg: RetrievalConfig = config.retrieval
        self._embedder: Embedder | None = None
        self._gate: Gate | None = None
        self._index: DocIndex | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from coe.embedder import shared_embedder

            self._embedder = shared_embedder(self.config.embedder, self.config.base_dir)
        return self._embedder

    @property
    def gate(self) -> Gate:
        if self._gate is None:
            flags = {name: c.retrieve for name, c in self.config.router.categories.items()}
            model = self.config.resolve_path(self.cfg.model) if self.cfg.model else None
            self._gate = make_gate(
                self.cfg.gate, model=model, threshold=self.cfg.threshold, flags=flags, embedder=self.embedder
            )
        return self._gate

    def index(self) -> DocIndex:
        """Opened on first need; a failure is not remembered, so an index built later is picked up."""
        if self._index is None:
            if not self.cfg.index:
                raise CoEError("retrieval.index is not set")
            self._index = DocIndex.open(self.config.resolve_path(self.cfg.index), self.embedder)
        return self._index

    def decide(self, texts: Sequence[str], categories: Sequence[str | None]) -> list[Verdict]:
        probe = Probe(texts, categories, self.embedder, self.index, self.cfg.top_k)
        return self.gate.decide(probe)

    def run(self, request: Request, decision: RouteDecision | None) -> tuple[Request, RetrievalTrace]:
        """Gate, search and inject for one request (blocking: call it in a thread)."""
        return self.run_many([request], [decision])[0]

    def run_many(
        self, requests: Sequence[Request], decisions: Sequence[RouteDecision | None]
    ) -> list[tuple[Request, RetrievalTrace]]:
        """The same for many requests (``coe batch``): one encoder call and one gate pass for all of
        them; each trace gets its share of the time. A failure answers them all without documents."""
        started = time.perf_counter()
        try:
            texts = [r.text for r in requests]
            verdicts = self.decide(texts, [d.category if d else None for d in decisions])
        except RETRIEVAL_FAILURES as exc:
            log.warning("retrieval failed, answering without documents: %s", exc)
            failed = RetrievalTrace(
                gate=self.cfg.gate,
                retrieve=False,
                reason="retrieval failed: answering without documents",
                error=str(exc),
                latency_ms=_share(started, len(requests)),
            )
            return [(request, failed.model_copy()) for request in requests]
        share = _share(started, len(requests))
        out = []
        for request, verdict in zip(requests, verdicts, strict=True):
            hits = _within_budget(verdict.hits, self.cfg.max_context_chars)
            trace = RetrievalTrace(
                gate=self.cfg.gate,
                retrieve=verdict.retrieve and bool(hits),
                reason=verdict.reason,
                score=verdict.score,
                documents=[h.id for h in hits],
                scores=[h.score for h in hits],
                searched=verdict.searched,
                latency_ms=share,
            )
            out.append(((inject(request, hits, self.cfg.prompt) if hits else request), trace))
        return out


def _share(started: float, n: int) -> float:
    return round(_ms(started) / max(1, n), 2)


def _within_budget(hits: Sequence[Hit], budget: int) -> list[Hit]:
    """Best hits first while they fit; the first one is cut to the budget rather than lost."""
    kept: list[Hit] = []
    used = 0
    for hit in hits:
        if used + len(hit.text) > budget:
            if not kept:
                kept.append(hit.model_copy(update={"text": hit.text[:budget]}))
            break
        kept.append(hit)
        used += len(hit.text)
    return kept


def format_documents(hits: Sequence[Hit]) -> str:
    return "\n\n".join(f"[{h.id}] {h.title}: {h.text}" if h.title else f"[{h.id}] {h.text}" for h in hits)


def inject(request: Request, hits: Sequence[Hit], template: str) -> Request:
    """Rewrite the last user turn as documents + question. The documents go into the user turn, not a
    system message, so the expert keeps its own system prompt (and Gemma, which has no system role,
    sees them too)."""
    messages = list(request.messages)
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
    values = {
        "documents": format_documents(hits),
        "first_id": hits[0].id if hits else "",
        "question": messages[last].content,
    }
    # One pass, so braces inside a document or the question are never taken for placeholders.
    content = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    messages[last] = Message(role=messages[last].role, content=content)
    return request.model_copy(update={"messages": messages})


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
