"""Sessions in the request path: find the conversation, steer the routing decision, remember the
answer. ``CoE`` calls ``open`` before routing, ``steer`` after the router decided and ``close`` once
an expert answered; nothing here raises for a store failure (the turn is routed statelessly and the
trace says why).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coe.clock import ms_since
from coe.config.sessions import SessionsConfig
from coe.sessions.identity import continued_key, history_key, tool_loop_open, user_turns
from coe.sessions.policy import Kept, steer
from coe.sessions.store import (
    MemoryStore,
    RedisStore,
    SessionRecord,
    SessionStore,
    SqliteStore,
    StoredResponse,
    StoreUnavailable,
)
from coe.types import Message, Request, RouteDecision, SessionSource, SessionTrace

if TYPE_CHECKING:
    import numpy as np

    from coe.config import CoEConfig
    from coe.encoding.embedder import Embedder
    from coe.sessions.continuation import ContinuationModel

log = logging.getLogger("coe.sessions")
# Without a continuation model (another encoder), only a confident, clear switch moves a session.
FALLBACK_SWITCH_CONFIDENCE = 0.9
FALLBACK_SWITCH_MARGIN = 0.5


@dataclass
class Turn:
    """One request's view of its session, from ``open`` to ``close``."""

    trace: SessionTrace
    record: SessionRecord | None = None
    explicit: str | None = None  # an id the caller gave
    vector: np.ndarray | None = field(default=None, repr=False)  # this turn's embedding, once computed


def open_store(cfg: SessionsConfig, config: CoEConfig, default: str, state_dir: Path) -> SessionStore:
    kind = cfg.store or default
    if kind == "redis":
        assert cfg.url is not None  # checked by SessionsConfig
        return RedisStore(cfg.url, cfg.ttl_s, cfg.max_sessions, cfg.timeout_s)
    if kind == "sqlite":
        path = config.resolve_path(cfg.path) if cfg.path else state_dir / "sessions.db"
        return SqliteStore(path, cfg.ttl_s, cfg.max_sessions)
    return MemoryStore(cfg.ttl_s, cfg.max_sessions)


class Sessions:
    def __init__(
        self,
        cfg: SessionsConfig,
        store: SessionStore,
        embedder: Embedder | None,
        continuation: ContinuationModel | None,
        category_experts: dict[str, str],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.continuation = continuation
        self.category_experts = category_experts
        self.errors = 0  # store failures since start
        fitted = continuation.header if continuation is not None else None
        conf, margin = (fitted.switch_confidence, fitted.switch_margin) if fitted else (None, None)
        self.switch_confidence = _first(cfg.switch_confidence, conf, FALLBACK_SWITCH_CONFIDENCE)
        self.switch_margin = _first(cfg.switch_margin, margin, FALLBACK_SWITCH_MARGIN)

    # ----------------------------------------------------------------------------------- stages

    async def open(self, request: Request, session: str | None, source: SessionSource) -> Turn:
        """Find the session this request continues (by the id given, else by its history)."""
        trace = SessionTrace(source=source if session else "none")
        turn = Turn(trace=trace, explicit=session)
        alias = None if session else history_key(request.messages)
        if session is None and alias is None:
            trace.source = "new"
            return turn
        if session is None:
            trace.source = "history"
        t = time.perf_counter()
        try:
            turn.record = await self.store.get(session, alias)
        except StoreUnavailable as exc:
            self._failed(turn, exc)
        trace.lookup_ms = ms_since(t)
        if turn.record is not None:
            trace.id, trace.expert = turn.record.id, turn.record.expert
        return turn

    def steer(
        self, turn: Turn, request: Request, stateless: RouteDecision, experts: set[str]
    ) -> RouteDecision:
        """The decision to act on. CPU-bound (it may embed the turn): run it off the event loop."""
        trace = turn.trace
        trace.stateless = stateless
        record = turn.record
        if record is not None and record.expert not in experts:  # the registry changed under it
            record = None
        kept = Kept(record.id, record.expert, tuple(record.experts), record.category) if record else None
        continuation = self._continuation(turn, request)
        outcome = steer(
            stateless,
            kept,
            continuation=continuation,
            tool_loop=tool_loop_open(request.messages),
            category_experts=self.category_experts,
            switch_confidence=self.switch_confidence,
            switch_margin=self.switch_margin,
        )
        trace.action = "stateless" if trace.error and kept is None else outcome.action
        trace.continuation = round(continuation, 4) if kept is not None else None
        trace.reason = (
            f"kept expert {kept.expert!r} for session {kept.session} ({outcome.reason})"
            if kept is not None and outcome.action in ("kept", "tool_loop")
            else outcome.reason
        )
        if trace.error and kept is None:
            trace.reason = f"routed statelessly: {trace.error}"
        return outcome.decision

    def pinned(self, turn: Turn) -> None:
        turn.trace.action = "pinned"
        turn.trace.reason = "the caller pinned the expert: the session records it, routing is not changed"

    async def close(
        self, turn: Turn, request: Request, answer: Message, expert: str, decision: RouteDecision
    ) -> None:
        """Remember who answered, under the id and under the history the next turn will resend
        (``answer``: the assistant turn as the client will send it back, tool calls included)."""
        record = turn.record or SessionRecord(id=turn.explicit or uuid.uuid4().hex[:16], expert=expert)
        record.expert = expert
        record.experts = decision.recruited if expert in decision.recruited else [expert]
        record.category = decision.category
        record.confidence = decision.confidence
        record.turns += 1
        record.updated = time.time()
        if turn.vector is not None and self.embedder is not None:
            record.vector, record.space = SessionRecord.pack(turn.vector), self.embedder.space
        turn.trace.id = record.id
        turn.trace.turn = record.turns
        alias = None if turn.explicit else continued_key(request.messages, answer)
        try:
            await self.store.put(record, alias)
        except StoreUnavailable as exc:
            self._failed(turn, exc)

    async def recall_response(self, response_id: str) -> StoredResponse | None:
        """A stored Responses reply, for ``previous_response_id``. Raises StoreUnavailable: unlike a
        routing hint, a conversation the caller asked to continue cannot be guessed."""
        return await self.store.get_response(response_id)

    async def remember_response(self, record: StoredResponse) -> None:
        try:
            await self.store.put_response(record)
        except StoreUnavailable as exc:  # the answer still goes out; continuing from it will 404
            self.errors += 1
            log.warning("session store unavailable, response %s not stored: %s", record.id, exc)

    async def aclose(self) -> None:
        await self.store.aclose()

    # ------------------------------------------------------------------------------ internals

    def _failed(self, turn: Turn, exc: StoreUnavailable) -> None:
        self.errors += 1
        turn.trace.error = str(exc)
        log.warning("session store unavailable, routing statelessly: %s", exc)

    def _continuation(self, turn: Turn, request: Request) -> float:
        """How much this turn continues the session (0 for a first turn); embeds the turn, which the
        record keeps for a caller that sends only new turns."""
        model, embedder = self.continuation, self.embedder
        if model is None or embedder is None:
            return 0.0
        turns = user_turns(request.messages)
        text = turns[-1] if turns else request.text
        window = turns[-self.cfg.context_turns : -1] if self.cfg.context_turns > 1 else []
        vectors = embedder.encode([text, *window], model.header.max_tokens)
        turn.vector = vectors[0]
        earlier = list(vectors[1:])
        if (
            not earlier
            and turn.record is not None
            and (last := turn.record.last_vector(embedder.space)) is not None
        ):
            earlier = [last]  # the caller sent only the new turn (a session id): the stored one stands in
        if turn.record is None:
            return 0.0
        previous = max(earlier, key=lambda v: float(v @ vectors[0])) if earlier else None
        return model.probability(vectors[0], previous, text)


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)
