"""The ``signals:`` block of experts.yaml: which checks run on a request before (or instead of) its
expert, and what each verdict does, with the semantic cache's settings (``signals.cache``). Here,
not in ``coe/signals/``, for the reason the sessions' and the trace store's settings are in
``coe/config/``: the registry's root model holds them, and the package that runs them imports the
registry, never the other way round.

Actions (``action:``): ``block`` (answer 400 ``content_policy`` / ``pii_policy``, no expert is called),
``route`` with ``route: EXPERT`` (send the request to that expert instead of routing it), ``redact``
(PII only: replace the spans before any expert sees them), ``flag`` (answer normally; the trace and a
metric say so), ``allow`` (only in a per-category override: do nothing for that category).

Per-category overrides: ``categories:`` maps one of the signal's own categories (the guard's labels
``jailbreak`` / ``injection``, the PII types) to its own action. They are the signal's categories,
not the router's, because the stage runs before routing: the router's category is not known yet.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from coe.config.base import Issue, Loc, RegistryView, Strict, unknown_experts
from coe.config.sessions import check_store

ScopePart = Literal["model", "system", "tools", "params"]
ALL_SCOPE: tuple[ScopePart, ...] = ("model", "system", "tools", "params")


class CacheConfig(Strict):
    """When a request may be answered from an earlier answer. The conversation before the last user
    turn and the response format are always part of the key; ``scope`` names the other parts."""

    enabled: bool = Field(True, description="false: keep the block but never look up or store")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="least probability, under the pair verifier, that two wordings ask the same thing; "
        "None: the one chosen when the verifier was fitted",
    )
    min_cosine: float = Field(
        0.8,
        ge=-1,
        le=1,
        description="nearest neighbours below this cosine (router embedding) are never considered",
    )
    semantic: bool = Field(
        True, description="false: exact matches only (the same last user turn, whitespace folded)"
    )
    verifier: str | None = Field(
        None,
        description="pair verifier from `coe train-cache` (relative to this file); None: the one "
        "shipped for the default encoder",
    )
    ttl_s: float = Field(3600.0, gt=0, description="an answer is replayed for this long after it was given")
    scope: list[ScopePart] = Field(
        default_factory=lambda: list(ALL_SCOPE),
        description="what else a hit must share: the model id asked, the system prompt, the tools and "
        "their schemas, the generation params that change the answer",
    )
    cache_sampled: bool = Field(
        False,
        description="also cache answers sampled with temperature > 0 (a replay then repeats one sample)",
    )
    store: Literal["memory", "sqlite", "redis"] | None = Field(
        None, description="where entries live; None: memory for the library, sqlite for `coe serve`"
    )
    path: str | None = Field(
        None, description="sqlite: the database file (relative to this file); None: cache.db in the state dir"
    )
    url: str | None = Field(None, description="redis: the server, e.g. redis://127.0.0.1:6379/0")
    timeout_s: float = Field(0.25, gt=0, description="redis: longest wait for one operation")
    max_entries: int = Field(10_000, ge=1, description="entries kept per scope; the oldest go first")

    @model_validator(mode="after")
    def _store_settings(self) -> CacheConfig:
        check_store(self.store, self.url, self.path)
        return self


ActionName = Literal["block", "route", "redact", "flag", "allow"]
Role = Literal["system", "developer", "user", "assistant", "tool"]
DEFAULT_ROLES: tuple[Role, ...] = ("user", "tool")
GUARD_LABELS = ("jailbreak", "injection")

# The entity types of Presidio's predefined pattern recognizers (presidio-analyzer 2.2), which run
# without an NLP model. Kept here so `coe validate` can name an unknown type without importing
# Presidio; tests/unit/test_signals_pii.py checks it against the installed analyzer.
PATTERN_TYPES = (
    "CREDIT_CARD",
    "CRYPTO",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "MEDICAL_LICENSE",
    "PHONE_NUMBER",
    "URL",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "US_ITIN",
    "US_PASSPORT",
    "US_SSN",
    "UK_NHS",
)
# Types Presidio finds only with a spaCy NER model, which CoE does not load (see docs/signals.md).
NER_TYPES = ("PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME")
DEFAULT_PII_TYPES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"]


class ActionSpec(Strict):
    """What a verdict does: ``action`` and, for ``route``, the expert (``route: NAME`` alone means
    ``action: route``)."""

    action: ActionName | None = Field(None, description="block | route | redact | flag | allow")
    route: str | None = Field(None, description="the expert that answers instead (action: route)")

    @model_validator(mode="after")
    def _route_needs_expert(self) -> Self:
        if self.route is not None and (self.action is None or "action" not in self.model_fields_set):
            self.action = "route"
        if self.action == "route" and self.route is None:
            raise ValueError("action 'route' needs `route: EXPERT`")
        if self.route is not None and self.action != "route":
            raise ValueError(f"`route:` is only for action 'route', not {self.action!r}")
        return self

    def check(self, config: RegistryView, loc: Loc) -> list[Issue]:
        return unknown_experts(config, ((*loc, "route"), self.route))


class GuardConfig(ActionSpec):
    """The jailbreak / prompt-injection guard (``coe train-guard``)."""

    model: str = Field(description="guard file from `coe train-guard` (relative to this file)")
    action: ActionName | None = Field("block", description="block | route | flag (redact is PII's)")
    target_fpr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="false-positive rate the threshold is set for, from the calibration scores stored "
        "in the guard file (None: the one it was trained with, default 0.02)",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="a probability threshold; wins over target_fpr"
    )
    categories: dict[Literal["jailbreak", "injection"], ActionSpec] = Field(
        default_factory=dict, description="per-label action, e.g. {injection: {action: flag}}"
    )

    @model_validator(mode="after")
    def _no_redact(self) -> Self:
        actions = [self.action, *(c.action for c in self.categories.values())]
        if "redact" in actions:
            raise ValueError("the guard cannot redact (only pii can); use block, route or flag")
        return self


class PiiConfig(ActionSpec):
    """PII detection with Presidio's pattern recognizers (``pip install 'coe[signals]'``)."""

    action: ActionName | None = Field("redact", description="redact | block | route | flag")
    types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PII_TYPES),
        min_length=1,
        description=f"entity types to find; known: {', '.join(PATTERN_TYPES)}",
    )
    min_score: float = Field(
        0.3, ge=0, le=1, description="Presidio's confidence below which a match is ignored"
    )
    roles: list[Role] = Field(
        default_factory=lambda: list(DEFAULT_ROLES), description="the turns scanned (and redacted)"
    )
    categories: dict[str, ActionSpec] = Field(
        default_factory=dict, description="per-type action, e.g. {US_SSN: {action: block}}"
    )

    @model_validator(mode="after")
    def _known_types(self) -> Self:
        unknown = [t for t in [*self.types, *self.categories] if t not in PATTERN_TYPES]
        if unknown:
            ner = [t for t in unknown if t in NER_TYPES]
            why = f" ({', '.join(ner)} need a spaCy NER model, which CoE does not load)" if ner else ""
            raise ValueError(
                f"unknown PII type {', '.join(map(repr, unknown))}{why}; known: {', '.join(PATTERN_TYPES)}"
            )
        return self


class SignalsConfig(Strict):
    """``signals:``: checks before routing. Each block is optional; absent: that check is off."""

    cache: CacheConfig | None = Field(
        None, description="the semantic response cache (coe.signals.cache); absent: no cache"
    )
    guard: GuardConfig | None = Field(None, description="jailbreak / prompt-injection guard")
    pii: PiiConfig | None = Field(None, description="PII detection and redaction")

    def check(self, config: RegistryView) -> list[Issue]:
        """Cross-references: every ``route:`` names an expert."""
        problems: list[Issue] = []
        for name in ("guard", "pii"):
            block: GuardConfig | PiiConfig | None = getattr(self, name)
            if block is None:
                continue
            problems += block.check(config, ("signals", name))
            for category, spec in block.categories.items():
                problems += spec.check(config, ("signals", name, "categories", category))
        return problems
