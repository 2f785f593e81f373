"""The settings of the skills router (``router.type: skills``) and their checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from coe.config.base import Issue, RegistryView, Strict, unknown_experts
from coe.config.routing import FallbackConfig, RouterConfig


class SkillsConfig(Strict):
    """Recruit experts by the skills a prompt needs (Symbolic-MoE), scored against the per-expert
    skill profile written by ``coe profile``."""

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


class SkillsRouterConfig(RouterConfig):
    """``router: {type: skills, skills: {...}}``, with an optional generalist fallback."""

    skills: SkillsConfig | None = Field(None, description="settings of the skills router (required)")
    fallback: FallbackConfig | None = Field(
        None, description="the expert tried when every recruited one failed (skills.fallback wins)"
    )

    def fallback_expert(self) -> str | None:
        if self.skills is not None and self.skills.fallback is not None:
            return self.skills.fallback
        return self.fallback.expert if self.fallback else None

    def check(self, config: RegistryView) -> list[Issue]:
        if self.skills is None:
            return [Issue(("router", "skills"), "the skills router needs a skills block with a profile")]
        # The profile file itself is read by the router: `coe profile` writes it.
        return unknown_experts(
            config,
            (("router", "fallback", "expert"), self.fallback.expert if self.fallback else None),
            (("router", "skills", "annotator"), self.skills.annotator),
            (("router", "skills", "fallback"), self.skills.fallback),
        )
