"""``router.sessions``: conversation-aware routing, for every router type.

A follow-up is answered by the expert that wrote the earlier turns unless the new turn is a real
change of topic; the policy and the stores live in ``coe.sessions``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from coe.config.base import Strict


class SessionsConfig(Strict):
    """How a conversation keeps its expert. The defaults work: in-process sessions for the library,
    SQLite in the state directory for ``coe serve``, and the continuation model shipped for the
    default encoder."""

    enabled: bool = Field(
        True, description="false: route every turn on its own, as if it began a conversation"
    )
    context_turns: int = Field(
        2,
        ge=1,
        le=8,
        description="user turns the router reads for a new turn: the current one and the ones before it",
    )
    switch_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="switch to another expert only when the new decision gives it at least this probability; "
        "None: the value fitted with the continuation model",
    )
    switch_margin: float | None = Field(
        None,
        ge=0,
        le=1,
        description="and only when its probability leads the kept expert's by at least this much; None: the "
        "fitted value",
    )
    model: str | None = Field(
        None,
        description="continuation model from `coe sessions fit` (relative to this file); None: the one "
        "shipped for the default encoder, or none when the encoder differs",
    )
    store: Literal["memory", "sqlite", "redis"] | None = Field(
        None, description="where sessions live; None: memory for the library, sqlite for `coe serve`"
    )
    path: str | None = Field(
        None,
        description="sqlite: the database file (relative to this file); None: sessions.db in the state "
        "directory",
    )
    url: str | None = Field(
        None, description="redis: the server, e.g. redis://127.0.0.1:6379/0 or ${REDIS_URL}"
    )
    ttl_s: float = Field(86_400.0, gt=0, description="a session not continued for this long is forgotten")
    max_sessions: int = Field(
        100_000, ge=1, description="at most this many sessions; the least recent go first"
    )
    timeout_s: float = Field(
        0.25, gt=0, description="redis: longest wait for one store operation before routing statelessly"
    )

    @model_validator(mode="after")
    def _store_settings(self) -> SessionsConfig:
        check_store(self.store, self.url, self.path)
        return self


def check_store(store: str | None, url: str | None, path: str | None) -> None:
    """The rule of every store block (sessions, the semantic cache): ``url`` goes with redis,
    ``path`` with sqlite."""
    if store == "redis" and not url:
        raise ValueError("store redis needs url (e.g. redis://127.0.0.1:6379/0)")
    if url and store != "redis":
        raise ValueError("url is for store: redis")
    if path and store != "sqlite":
        raise ValueError("path is for store: sqlite")
