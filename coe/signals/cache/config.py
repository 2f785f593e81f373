"""``signals.cache``: the semantic response cache's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from coe.config.base import Strict
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
        description="pair verifier from `coe eval cache --fit` (relative to this file); None: the one "
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
