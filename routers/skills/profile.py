"""The skill profile file: what each expert is good at, measured on validation data.

``coe profile`` writes it and ``router.skills.profile`` references it. It is versioned JSON (a
pydantic model) so it can be read, diffed and checked. Each expert's entry carries a fingerprint of
what defines its behaviour (model, weights file, template, system prompt, where it lives): a profile
measured for other experts is refused, because recruiting by someone else's scores is silently wrong.
Registry experts that are not in the profile are allowed; they are never recruited, only used as the
fallback.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, ValidationError

from coe.config.experts import LlamaCppServe, VllmServe
from coe.errors import CoEError

if TYPE_CHECKING:
    from coe.config import CoEConfig, ExpertConfig

PROFILE_VERSION: Literal[1] = 1


class ProfileError(CoEError):
    """A profile file that cannot be used with this registry; the message says which and why."""


class CategoryScore(BaseModel):
    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


class ExpertSkills(BaseModel):
    """One expert's record: +1 per keyword of each question it answered right, -1 per wrong one."""

    fingerprint: str = Field("", description="what defines the expert's behaviour; empty offline")
    model: str | None = None
    scores: dict[str, float] = Field(default_factory=dict, description="keyword -> summed +1/-1")
    n: int = 0
    correct: int = 0
    categories: dict[str, CategoryScore] = Field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


class AggregatorChoice(BaseModel):
    """Which expert picks the right answer most often among mixed right and wrong candidates."""

    expert: str | None = None
    accuracy: dict[str, float] = Field(default_factory=dict, description="candidate -> accuracy")
    n: int = Field(0, description="validation questions with mixed right and wrong answers used")
    reason: str = ""


class SkillProfile(BaseModel):
    version: Literal[1] = PROFILE_VERSION
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    sources: list[str] = Field(default_factory=list)
    grader: str = ""
    encoder: str = Field(description="embedder.model the keywords were mapped with")
    keywords_from: str = Field("embedding", description="embedding, or annotator:EXPERT")
    vocabulary: list[str] = Field(description="the profile's keywords; prompts are mapped onto these")
    registry_fingerprint: str = ""
    n_questions: int = 0
    experts: dict[str, ExpertSkills]
    aggregator: AggregatorChoice = Field(default_factory=AggregatorChoice)


# ------------------------------------------------------------------------------- fingerprints


def expert_fingerprint(expert: ExpertConfig) -> str:
    """Model identity and prompt, not sampling settings: a new max_tokens keeps the profile valid,
    another GGUF or system prompt does not."""
    serve = expert.serve
    llamacpp = serve if isinstance(serve, LlamaCppServe) else None
    identity: dict[str, object] = {
        "model": expert.model,
        "gguf": llamacpp.gguf if llamacpp else None,
        "sha256": llamacpp.sha256 if llamacpp else None,
        "chat_template": llamacpp.chat_template if llamacpp else None,
        "endpoint": expert.endpoint,
        "provider": expert.provider,
        "system": expert.system,
    }
    if llamacpp is not None and llamacpp.chat_template_file:  # only when set: older fingerprints stay valid
        identity["chat_template_file"] = llamacpp.chat_template_file
    if isinstance(serve, VllmServe):  # a key of its own: llama.cpp experts keep their fingerprints
        identity["vllm_model"] = serve.model
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def registry_fingerprint(config: CoEConfig) -> str:
    parts = sorted(f"{name}={expert_fingerprint(e)}" for name, e in config.experts.items())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- files


def save_profile(profile: SkillProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(profile.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_profile(path: Path) -> SkillProfile:
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file (build it with `coe profile`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not a JSON profile ({exc})") from None
    if isinstance(data, dict) and data.get("version") not in (None, PROFILE_VERSION):
        raise ProfileError(
            f"{path}: profile version {data.get('version')!r}; this CoE reads version {PROFILE_VERSION}"
        )
    try:
        return SkillProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top>"
        raise ProfileError(f"{path}: {where}: {first['msg']}") from None


def check_profile(profile: SkillProfile, config: CoEConfig, path: Path, encoder: str) -> list[str]:
    """Refuse a profile measured for other experts; return the registry experts it does not cover
    (they are recruited only as the fallback)."""
    problems = []
    for name, skills in profile.experts.items():
        expert = config.experts.get(name)
        if expert is None:
            problems.append(f"expert {name!r} is in the profile but not in the registry")
        elif skills.fingerprint and skills.fingerprint != expert_fingerprint(expert):
            problems.append(
                f"expert {name!r} changed since profiling (model, weights, template or system prompt)"
            )
    if problems:
        raise ProfileError(
            f"{path}: built with another registry (fingerprint {profile.registry_fingerprint or '?'}, "
            f"this one {registry_fingerprint(config)}): {'; '.join(problems)}. "
            "Rebuild it with `coe profile` for this registry."
        )
    if profile.encoder != encoder:
        raise ProfileError(
            f"{path}: keywords were mapped with encoder {profile.encoder!r} but embedder.model is "
            f"{encoder!r}; rebuild the profile with this encoder"
        )
    if not profile.vocabulary or not profile.experts:
        raise ProfileError(f"{path}: the profile has no vocabulary or no experts")
    return sorted(set(config.experts) - set(profile.experts))
