"""Skill-based recruitment (Symbolic-MoE, arXiv 2503.05641) with a dynamic number of experts.

A prompt's skills are keywords of the profile's vocabulary: from an annotator expert (asked for 2-5
keywords several times; recurring ones kept; each mapped to its nearest vocabulary entry), or, on the
fast path, the vocabulary entries nearest to the prompt's embedding. Each profiled expert's local
suitability (its profile scores on those keywords) times its global competence gives a weight; the
top experts by weight are recruited (``k``), or as many as it takes for their cumulative weight to
pass ``top_p`` (``k: dynamic``). They answer concurrently and the aggregator merges their answers.

``route`` is the fast path only and calls no expert (``coe route``, batch routing); ``aroute``, used
by ``CoE.aask``, asks the annotator when one is configured. Everything the decision rests on goes
into ``RouteDecision.details``: keywords and how they were found, local/global scores, weights, k.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from coe.config.routing import settings_of
from coe.encoding.embedder import Embedder, shared_embedder
from coe.errors import ConfigError
from coe.types import Message, Request, RouteDecision
from routers.skills.config import SkillsRouterConfig
from routers.skills.keywords import (
    ANNOTATOR_FORMAT,
    ANNOTATOR_PARAMS,
    ANNOTATOR_PROMPT,
    Match,
    Vocabulary,
    parse_keywords,
    recurring,
)
from routers.skills.profile import check_profile, load_profile
from routers.skills.recruit import Recruiter
from routers.skills.text import strip_demonstrations

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.protocols import CallExpert
MAX_QUESTION_CHARS = 2000


class SkillsRouter:
    name = "skills"
    Config = SkillsRouterConfig

    def __init__(self, config: CoEConfig, embedder: Embedder) -> None:
        import numpy as np

        settings = settings_of(config.router, SkillsRouterConfig)
        cfg = settings.skills
        if cfg is None:
            raise ConfigError(["router.skills: the skills router needs a skills block with a profile"])
        self.cfg = cfg
        self.embedder = embedder
        path = config.resolve_path(cfg.profile)
        profile = load_profile(path)
        self.unprofiled = check_profile(profile, config, path, embedder.name)
        self.experts = list(profile.experts)
        self.aggregator = profile.aggregator.expert
        words = profile.vocabulary
        scores = np.array([[profile.experts[e].scores.get(w, 0.0) for w in words] for e in self.experts])
        self.recruiter = Recruiter(
            self.experts,
            scores,
            k=cfg.k,
            top_p=cfg.top_p,
            min_k=cfg.min_k,
            max_k=cfg.max_k,
            sampling=cfg.sampling,
            seed=cfg.seed,
            sharpness=cfg.sharpness,
        )
        self.vocab = Vocabulary(words, embedder.encode(words))
        self.fallback = settings.fallback_expert()

    @classmethod
    def from_config(cls, config: CoEConfig) -> SkillsRouter:
        return cls(config, shared_embedder(config.embedder, config.base_dir))

    # ------------------------------------------------------------------------------ fast path

    def route(self, requests: Sequence[Request]) -> list[RouteDecision]:
        if not requests:
            return []
        why = (
            "no annotator configured"
            if self.cfg.annotator is None
            else "routing without generation (coe route, batch) calls no expert, so the annotator was skipped"
        )
        nearest = self._nearest(requests)
        return [self._decide(m, r.text, "embedding", why) for r, m in zip(requests, nearest, strict=True)]

    def _nearest(self, requests: Sequence[Request]) -> list[list[Match]]:
        texts = [strip_demonstrations(r.text) for r in requests]
        return self.vocab.nearest(self.embedder.encode(texts), self.cfg.keywords)

    # ------------------------------------------------------------------------------ annotator

    async def aroute(self, requests: Sequence[Request], call_expert: CallExpert) -> list[RouteDecision]:
        if self.cfg.annotator is None or not requests:
            return await asyncio.to_thread(self.route, requests)
        notes = await asyncio.gather(*(self._annotate(r, call_expert) for r in requests))
        pairs = zip(requests, notes, strict=True)
        return [await asyncio.to_thread(self._from_annotation, r, n) for r, n in pairs]

    async def _annotate(self, request: Request, call_expert: CallExpert) -> dict[str, Any]:
        question = strip_demonstrations(request.text)[:MAX_QUESTION_CHARS]
        ask = Request(
            messages=[Message(role="user", content=ANNOTATOR_PROMPT.format(question=question))],
            params=dict(ANNOTATOR_PARAMS),
            response_format=ANNOTATOR_FORMAT,
        )
        t = time.perf_counter()
        annotator = self.cfg.annotator
        assert annotator is not None  # _annotate runs only when one is configured
        replies = await asyncio.gather(*(call_expert(annotator, ask) for _ in range(self.cfg.samples)))
        samples = [parse_keywords(a.text) for a in replies if a.ok]
        return {
            "expert": self.cfg.annotator,
            "samples": samples,
            "errors": [a.error for a in replies if not a.ok],
            "kept": recurring(samples),
            "latency_ms": round((time.perf_counter() - t) * 1000, 1),
        }

    def _from_annotation(self, request: Request, note: dict[str, Any]) -> RouteDecision:
        kept: list[str] = note["kept"]
        if not kept:
            got = (
                "errors: " + "; ".join(note["errors"])
                if not note["samples"]
                else f"samples {note['samples']}"
            )
            why = (
                f"annotator {note['expert']!r} returned no usable keywords in {self.cfg.samples} sample(s) "
                f"({got}): fell back to the embedding fast path"
            )
            return self._decide(self._nearest([request])[0], request.text, "embedding", why, note)
        matches = self.vocab.map_keywords(kept, self.embedder.encode(kept))
        why = f"annotator {note['expert']!r}: keywords named in at least 2 of {self.cfg.samples} samples"
        return self._decide(matches, request.text, "annotator", why, note)

    # ------------------------------------------------------------------------------ decision

    def _decide(
        self, matches: list[Match], text: str, source: str, why: str, note: dict[str, Any] | None = None
    ) -> RouteDecision:
        index = [self.vocab.index[m.keyword] for m in matches]
        choice = self.recruiter.recruit(index, text)
        recruited = [self.experts[i] for i in choice.recruitment.chosen]
        weight = {e: round(float(w), 4) for e, w in zip(self.experts, choice.weights, strict=True)}
        fallback = self._fallback(recruited, choice.weights)
        keywords = [m.keyword for m in matches]
        listed = ", ".join(f"{e} (w={weight[e]:.2f})" for e in dict.fromkeys(recruited))
        reason = (
            f"skills: {', '.join(keywords)} ({source}) -> recruited {listed}; {choice.recruitment.rule}"
            + (
                " (no expert scored above 0 on these skills: ranked by global competence)"
                if choice.shifted
                else ""
            )
            + (f"; fallback {fallback}" if fallback else "")
        )
        details: dict[str, Any] = {
            "keywords": keywords,
            "keyword_similarity": {m.keyword: m.similarity for m in matches},
            "keywords_from": source,
            "why": why,
            "local": {e: round(float(v), 3) for e, v in zip(self.experts, choice.local, strict=True)},
            "global": {e: round(float(v), 4) for e, v in zip(self.experts, self.recruiter.glob, strict=True)},
            "weight": weight,
            "k": choice.recruitment.rule,
            "aggregator": self.aggregator,
            "unprofiled": self.unprofiled,
        }
        if source == "annotator":
            details["mapped_from"] = {m.keyword: m.source for m in matches}
        if note is not None:
            details["annotator"] = note
        return RouteDecision(
            router=self.name,
            experts=recruited + ([fallback] if fallback else []),
            fanout=len(recruited),
            weights={e: weight[e] for e in recruited},
            confidence=float(max(choice.weights)) if len(choice.weights) else None,
            reason=reason,
            details=details,
        )

    def _fallback(self, recruited: list[str], weights: Any) -> str | None:
        """The configured fallback; else the best-weighted profiled expert not recruited; else an
        expert the profile does not cover (such experts are never recruited, only fall back)."""
        if self.fallback and self.fallback not in recruited:
            return self.fallback
        ranked = sorted(range(len(self.experts)), key=lambda i: -float(weights[i]))
        spare = [self.experts[i] for i in ranked if self.experts[i] not in recruited]
        spare += [e for e in self.unprofiled if e not in recruited]
        return spare[0] if spare else None
