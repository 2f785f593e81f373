"""How prompts are routed and answers merged: categories, the fallback, the skills and cost routers,
the LLM classifier, and the aggregator."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from coe.config.base import Strict


class CategoryConfig(Strict):
    expert: str
    description: str = ""
    examples: list[str] = Field(default_factory=list)
    retrieve: bool = Field(
        False, description="retrieval gate `category`: fetch documents for prompts of this category"
    )


class FallbackConfig(Strict):
    expert: str
    min_confidence: float = Field(0.45, ge=0, le=1)


class SkillsConfig(Strict):
    """The ``skills`` router (Symbolic-MoE): recruit experts by the skills a prompt needs, scored
    against the per-expert skill profile written by ``coe profile``."""

    profile: str = Field(description="profile file from `coe profile` (relative to this file)")
    annotator: str | None = Field(
        None, description="expert asked for 2-5 keywords; None: embedding fast path only"
    )
    samples: int = Field(3, ge=1, le=16, description="annotator samples; keywords in >= 2 of them are kept")
    keywords: int = Field(3, ge=1, le=16, description="nearest profile keywords per prompt (fast path)")
    k: int | Literal["dynamic"] = Field(
        "dynamic", description="experts recruited per prompt: a number, or dynamic (top_p/min_k/max_k)"
    )
    top_p: float = Field(
        0.5, gt=0, le=1, description="dynamic k: recruit until the cumulative normalised weight passes this"
    )
    min_k: int = Field(1, ge=1, description="dynamic k: at least this many")
    max_k: int = Field(3, ge=1, description="dynamic k: at most this many")
    sampling: bool = Field(
        False, description="draw the k experts from the weights with replacement (the paper) instead of top-k"
    )
    seed: int = Field(0, description="sampling seed, mixed with the prompt so a prompt always routes alike")
    sharpness: float = Field(
        2.0, gt=0, description="exponent on global competence (the paper's temperature 0.5 = exponent 2)"
    )
    fallback: str | None = Field(
        None, description="expert tried when every recruited one failed; default router.fallback.expert"
    )

    @model_validator(mode="after")
    def _k_range(self) -> SkillsConfig:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k ({self.min_k}) must not exceed max_k ({self.max_k})")
        if isinstance(self.k, int) and self.k < 1:
            raise ValueError("k must be at least 1 or 'dynamic'")
        return self


class CostRouterConfig(Strict):
    """The cost-aware router (``router.type: cost``): per prompt, predict each expert's quality and
    cost from the nearest prompts of an outcome table and pick ``argmax(lam * quality - cost)``."""

    model: str = Field(description="artefact from `coe train-cost-router` (relative to this file)")
    lam: float | None = Field(
        None,
        ge=0,
        description="λ: the cost (in the artefact's unit) one unit of quality is worth; 0 always picks the "
        "cheapest, larger values buy quality; None: the artefact's recommended λ",
    )
    k: int | None = Field(None, ge=1, description="neighbours per prompt; None: the artefact's tuned value")
    experts: dict[str, str] = Field(
        default_factory=dict,
        description="expert name -> the outcome-table model it stands for; an expert named like a model "
        "needs no entry, and models no expert stands for are never picked",
    )
    costs: dict[str, float] = Field(
        default_factory=dict, description="expert -> fixed cost per request, replacing the predicted cost"
    )


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


class RouterConfig(Strict):
    """``type`` is a registered router name or a dotted path ``pkg.module:Class``."""

    type: str = "category"
    classifier: Literal["centroid", "knn", "logreg", "tfidf", "llm"] = Field(
        "centroid",
        description="fitted on the examples at start-up (llm: an expert picks the category, see router.llm); "
        "ignored when model is set",
    )
    llm: LLMClassifierConfig | None = Field(None, description="settings of classifier: llm")
    model: str | None = Field(
        None, description="artefact from `coe train-router` (relative to this file); replaces the examples"
    )
    categories: dict[str, CategoryConfig] = Field(default_factory=dict)
    max_tokens: int | None = Field(
        None,
        ge=8,
        description="category router: route on the first N tokens of a prompt (speed; the head says its "
        "domain): the router's own truncation, unlike embedder.max_tokens it leaves retrieval whole. "
        "An artefact (model) records the truncation it was trained with instead",
    )
    fallback: FallbackConfig | None = None
    temperature: float | None = Field(
        None, gt=0, description="softmax temperature; None calibrates it on the examples"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="settings for plug-in routers")
    skills: SkillsConfig | None = Field(None, description="settings of the skills router (type: skills)")
    cost: CostRouterConfig | None = Field(None, description="settings of the cost router (type: cost)")


class AggregatorConfig(Strict):
    type: str = "first"
    timeout_s: float | None = Field(
        None, gt=0, description="when several experts answer: the wait for each, cold start included"
    )
    expert: str | None = Field(
        None, description="synthesize/rank: the expert that writes or judges; default: the profile's pick"
    )
    max_tokens: int | None = Field(None, ge=1, description="synthesize/rank: token limit of that call")
    answer: Literal["auto", "choice", "number"] = Field(
        "auto", description="vote: what to extract (auto: option letters when the prompt lists options)"
    )
    options: dict[str, Any] = Field(default_factory=dict)
