"""The settings of the category router (``router.type: category``, the default) and their checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from coe.config.base import Issue, RegistryView, Strict, unknown_experts
from coe.config.routing import CategoryConfig, FallbackConfig, RouterConfig

# Fitted on the examples at start-up; llm asks an expert. An artefact (router.model) may also hold
# the tfidf -> kNN ``cascade`` (routers.category.model.MODEL_KINDS).
ClassifierKind = Literal["centroid", "knn", "logreg", "tfidf", "llm"]


class LLMClassifierConfig(Strict):
    """``classifier: llm``: a registered expert reads the prompt and picks one category (constrained
    output); its probabilities come from the log-probabilities of the category letters."""

    expert: str = Field(description="the expert asked to classify")
    max_prompt_chars: int = Field(2000, ge=50, description="the prompt is cut to this many characters")
    calibrate: bool = Field(
        True, description="fit the probability temperature on the category examples (one call each, once)"
    )
    timeout_s: float | None = Field(
        None, gt=0, description="bound on one classification call, cold start included"
    )


class CategoryRouterConfig(RouterConfig):
    """Two-step routing: p(category | prompt) from a classifier, then the category's expert."""

    classifier: ClassifierKind = Field(
        "centroid",
        description="fitted on the examples at start-up (llm: an expert picks the category, see router.llm); "
        "ignored when model is set",
    )
    llm: LLMClassifierConfig | None = Field(None, description="settings of classifier: llm")
    model: str | None = Field(
        None, description="artefact from `coe train-router` (relative to this file); replaces the examples"
    )
    categories: dict[str, CategoryConfig] = Field(
        default_factory=dict, description="category name -> its expert, description and examples"
    )
    max_tokens: int | None = Field(
        None,
        ge=8,
        description="route on the first N tokens of a prompt (speed; the head says its domain): the "
        "router's own truncation, unlike embedder.max_tokens it leaves retrieval whole. An artefact "
        "(model) records the truncation it was trained with instead",
    )
    fallback: FallbackConfig | None = Field(
        None, description="the generalist for prompts the router is unsure of"
    )
    temperature: float | None = Field(
        None, gt=0, description="softmax temperature; None calibrates it on the examples"
    )

    def category_routes(self) -> Mapping[str, CategoryConfig]:
        return self.categories

    def fallback_expert(self) -> str | None:
        return self.fallback.expert if self.fallback else None

    def check(self, config: RegistryView) -> list[Issue]:
        problems: list[Issue] = []
        for cat, spec in self.categories.items():
            problems += unknown_experts(config, (("router", "categories", cat, "expert"), spec.expert))
            if not spec.examples and not spec.description and not self.model:
                problems.append(Issue(("router", "categories", cat), "give examples and/or a description"))
        problems += unknown_experts(
            config,
            (("router", "fallback", "expert"), self.fallback_expert()),
            (("router", "llm", "expert"), self.llm.expert if self.llm else None),
        )
        if self.llm is None and self.classifier == "llm" and not self.model:
            why = "classifier llm needs a router.llm block naming the expert"
            problems.append(Issue(("router", "classifier"), why))
        if self.model and self.max_tokens is not None:
            why = "an artefact routes with the truncation it was trained with: coe train-router --max-tokens"
            problems.append(Issue(("router", "max_tokens"), why))
        if self.model and not (path := config.resolve_path(self.model)).is_file():
            problems.append(
                Issue(("router", "model"), f"no such file: {path}; write it with `coe train-router`")
            )
        if not self.categories:
            problems.append(
                Issue(("router", "categories"), "the category router needs at least one category")
            )
        return problems
