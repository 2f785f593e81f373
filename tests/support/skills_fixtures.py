"""Registries and hand-built skill profiles for the skills router and aggregator tests."""

from __future__ import annotations

from pathlib import Path

from coe.config import CoEConfig, load_config
from routers.skills.profile import (
    AggregatorChoice,
    ExpertSkills,
    SkillProfile,
    expert_fingerprint,
    save_profile,
)
from tests.support.paths import DEFAULT_REGISTRY

VOCABULARY = ["python programming", "algorithms", "arithmetic", "cooking", "history"]
# coder: code and numbers; general: food and the past. Totals 5 and 4: both globally positive.
SCORES = {
    "coder": {"python programming": 5, "algorithms": 3, "arithmetic": 2, "cooking": -3, "history": -2},
    "general": {"python programming": -3, "algorithms": -1, "arithmetic": -1, "cooking": 5, "history": 4},
}


def hand_profile(config: CoEConfig, scores: dict[str, dict[str, float]] = SCORES) -> SkillProfile:
    return SkillProfile(
        encoder=config.embedder.model,
        vocabulary=VOCABULARY,
        experts={
            name: ExpertSkills(fingerprint=expert_fingerprint(config.experts[name]), scores=s)
            for name, s in scores.items()
        },
        aggregator=AggregatorChoice(expert="coder", reason="hand-built for tests"),
    )


def skills_registry(
    tmp_path: Path,
    skills: str = "k: dynamic\n    top_p: 0.5",
    extra_experts: str = "",
    aggregator: str = "{type: vote}",
    profile: SkillProfile | None = None,
) -> Path:
    """The default experts (plus ``extra_experts``), the skills router over a hand-built profile."""
    head, _, _ = DEFAULT_REGISTRY.read_text().partition("router:")
    path = tmp_path / "experts.yaml"
    path.write_text(
        head.rstrip()
        + "\n"
        + extra_experts
        + f"\nrouter:\n  type: skills\n  skills:\n    profile: profile.json\n    {skills}\n"
        + f"aggregator: {aggregator}\n"
    )
    save_profile(profile or hand_profile(load_config(DEFAULT_REGISTRY)), tmp_path / "profile.json")
    return path


# A tiny graded validation file for `coe profile`: two subjects, two questions each.
QUESTIONS = [
    {"question": "What is 2 + 3?", "choices": ["4", "5", "6", "7"], "answer": "B", "subject": "arithmetic"},
    {"question": "What is 10 - 4?", "choices": ["6", "5", "4", "3"], "answer": "A", "subject": "arithmetic"},
    {"question": "Which language uses 'def' to define a function?", "choices": ["C", "Java", "Python", "Go"],
     "answer": "C", "subject": "programming"},
    {"question": "Which keyword returns a value from a Python function?",
     "choices": ["yield", "break", "pass", "return"], "answer": "D", "subject": "programming"},
]  # fmt: skip
