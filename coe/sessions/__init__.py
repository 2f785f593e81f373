"""Conversation-aware routing: a follow-up stays with the expert that wrote the earlier turns, a real
change of topic switches, a tool loop never does, and sessions can be shared by several servers.

``identity`` (which conversation a request continues), ``policy`` (the pure keep-or-switch rule),
``continuation`` (how much a turn continues the conversation), ``store`` (memory, SQLite, Redis),
``manager`` (the three stages ``CoE`` calls) and, offline, ``training`` (``coe sessions fit``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from coe.sessions.manager import Sessions, Turn, open_store
from coe.sessions.store import SessionRecord, StoredResponse, StoreUnavailable

if TYPE_CHECKING:
    from coe.config import CoEConfig

__all__ = [
    "SessionRecord",
    "Sessions",
    "StoreUnavailable",
    "StoredResponse",
    "Turn",
    "build_sessions",
    "open_store",
]

log = logging.getLogger("coe.sessions")


def build_sessions(config: CoEConfig, default_store: str, state_dir: Path) -> Sessions:
    """The registry's sessions: its store, and the continuation model for its encoder (the one named
    in ``router.sessions.model``, else the shipped one when the encoder matches, else none)."""
    from coe.encoding.embedder import shared_embedder
    from coe.encoding.files import encoder_space
    from coe.sessions.continuation import SHIPPED, ContinuationModel

    cfg = config.router.sessions
    emb = config.embedder
    space = encoder_space(emb.model, emb.backend) if emb.path is None else None
    model: ContinuationModel | None = None
    if cfg.model is not None:
        model = ContinuationModel.load(config.resolve_path(cfg.model))
    elif SHIPPED.is_file():
        shipped = ContinuationModel.load(SHIPPED)
        if space == shipped.header.space:
            model = shipped
        else:
            log.info(
                "no continuation model for encoder %s (the shipped one is for %s): sessions switch only on a "
                "confident, clear change; fit one with `coe sessions fit`",
                space or emb.path,
                shipped.header.space,
            )
    embedder = shared_embedder(emb, config.base_dir) if model is not None else None
    if model is not None and embedder is not None and embedder.space != model.header.space:
        raise ValueError(
            f"router.sessions.model: fitted on {model.header.space!r} vectors, but the embedder makes "
            f"{embedder.space!r}; fit it again with `coe sessions fit`"
        )
    routes = {name: c.expert for name, c in config.router.category_routes().items()}
    return Sessions(cfg, open_store(cfg, config, default_store, state_dir), embedder, model, routes)
