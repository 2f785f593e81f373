"""Retrieval (ExpertRAG): after routing, the registry's gate decides per prompt whether to fetch
documents (``coe.retrieval.gates``), the index is searched, and the chunks kept go into the prompt.
``Retriever.run`` never raises for a failed retrieval: the request goes on without documents and the
trace says why."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from coe.clock import ms_since
from coe.errors import CoEError
from coe.retrieval.gates import Gate, Probe, Verdict, make_gate
from coe.retrieval.index import DocIndex, Hit
from coe.types import ContentPart, Request, RetrievalTrace, RouteDecision, TextPart

if TYPE_CHECKING:
    from coe.config import CoEConfig, RetrievalConfig
    from coe.encoding.embedder import Embedder

log = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\{(documents|question|first_id)\}")
# What may go wrong while retrieving; the request is then answered without documents.
RETRIEVAL_FAILURES = (CoEError, OSError, RuntimeError, sqlite3.Error)


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
            from coe.encoding.embedder import shared_embedder

            self._embedder = shared_embedder(self.config.embedder, self.config.base_dir)
        return self._embedder

    @property
    def gate(self) -> Gate:
        if self._gate is None:
            flags = {name: c.retrieve for name, c in self.config.router.category_routes().items()}
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
    return round(ms_since(started) / max(1, n), 3)


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
        "question": messages[last].text,
    }
    # One pass, so braces inside a document or the question are never taken for placeholders.
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    turn = messages[last]
    if isinstance(turn.content, list):  # the text parts become the one text; images and files stay
        content: str | list[ContentPart] = [
            TextPart(text=text),
            *(p for p in turn.content if not isinstance(p, TextPart)),
        ]
    else:
        content = text
    messages[last] = turn.model_copy(update={"content": content})
    return request.model_copy(update={"messages": messages})
