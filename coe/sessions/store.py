"""Where sessions live: in process (LRU with expiry), SQLite (survives a restart), Redis (shared by
several ``coe serve`` processes or Ray ingress replicas).

A session is found by its id, or by an alias: the fingerprint of a conversation's history, which
changes every turn (``coe.sessions.identity``). Each store keeps the two apart, so ``coe sessions
list`` shows conversations, not turns. Every store forgets a session ``ttl_s`` after its last turn
and keeps at most ``max_sessions``, dropping the least recently continued first.

A store that cannot answer raises ``StoreUnavailable``; the caller then routes statelessly (the trace
and a metric say so): a session is a routing hint, never a reason to fail a request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from coe.data.stores import RedisClient, SqliteFile, StoreUnavailable

if TYPE_CHECKING:
    import numpy as np


log = logging.getLogger("coe.sessions")

__all__ = ["MemoryStore", "RedisStore", "SessionRecord", "SqliteStore", "StoreUnavailable", "StoredResponse"]


class SessionRecord(BaseModel):
    """What a conversation has been routed to so far."""

    id: str
    expert: str = Field(description="the expert that answered the last turn")
    experts: list[str] = Field(default_factory=list, description="the recruited experts of the last turn")
    category: str | None = None
    confidence: float | None = None
    turns: int = Field(0, description="turns answered in this session")
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    vector: str | None = Field(None, description="the last user turn's embedding, float16 base64")
    space: str | None = Field(None, description="the embedding space of vector")

    def last_vector(self, space: str) -> np.ndarray | None:
        import numpy as np

        if self.vector is None or self.space != space:
            return None
        return np.frombuffer(base64.b64decode(self.vector), dtype=np.float16).astype(np.float32)

    @staticmethod
    def pack(vector: np.ndarray) -> str:
        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode()


class StoredResponse(BaseModel):
    """A Responses API reply kept for ``previous_response_id``: the conversation up to and including
    its answer (system turns excluded: OpenAI does not carry ``instructions`` over), and its session."""

    id: str
    session: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list, description="wire-form turns")
    created: float = Field(default_factory=time.time)


def _parse_response(raw: str | bytes | None) -> StoredResponse | None:
    if raw is None:
        return None
    try:
        return StoredResponse.model_validate_json(raw)
    except ValidationError:
        return None


class SessionStore(Protocol):
    kind: str

    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    async def put_response(self, record: StoredResponse) -> None: ...

    async def get(self, session_id: str | None, alias: str | None) -> SessionRecord | None: ...

    async def put(self, record: SessionRecord, alias: str | None) -> None: ...

    async def list(self, limit: int) -> list[SessionRecord]: ...

    async def delete(self, session_id: str) -> bool: ...

    async def clear(self) -> int: ...

    async def aclose(self) -> None: ...


def _parse(raw: str | bytes | None) -> SessionRecord | None:
    if raw is None:
        return None
    try:
        return SessionRecord.model_validate_json(raw)
    except ValidationError:
        return None  # written by another version; the conversation starts afresh


class MemoryStore:
    """In process: the library's default. Sessions end with the process."""

    kind = "memory"

    def __init__(self, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._records: OrderedDict[str, SessionRecord] = OrderedDict()
        self._aliases: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()  # the batch runner routes from threads

    async def get_response(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            record = self._responses.get(response_id)
        return record if record is not None and time.time() - record.created < self.ttl_s else None

    async def put_response(self, record: StoredResponse) -> None:
        with self._lock:
            self._responses[record.id] = record
            while len(self._responses) > 4 * self.max_sessions:
                self._responses.popitem(last=False)

    async def get(self, session_id: str | None, alias: str | None) -> SessionRecord | None:
        now = time.time()
        with self._lock:
            if session_id is None and alias is not None and (found := self._aliases.get(alias)):
                session_id = found[0] if now - found[1] < self.ttl_s else None
            record = self._records.get(session_id) if session_id is not None else None
            if record is None or now - record.updated >= self.ttl_s:
                return None
            self._records.move_to_end(record.id)
            return record.model_copy()

    async def put(self, record: SessionRecord, alias: str | None) -> None:
        with self._lock:
            self._records[record.id] = record
            self._records.move_to_end(record.id)
            if alias is not None:
                self._aliases[alias] = (record.id, record.updated)
                self._aliases.move_to_end(alias)
            while len(self._records) > self.max_sessions:
                self._records.popitem(last=False)
            while len(self._aliases) > 4 * self.max_sessions:
                self._aliases.popitem(last=False)

    async def list(self, limit: int) -> list[SessionRecord]:
        now = time.time()
        with self._lock:
            live = [r for r in reversed(self._records.values()) if now - r.updated < self.ttl_s]
        return live[:limit]

    async def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._records.pop(session_id, None) is not None

    async def clear(self) -> int:
        with self._lock:
            n = len(self._records)
            self._records.clear()
            self._aliases.clear()
            self._responses.clear()
        return n

    async def aclose(self) -> None:
        return None


class SqliteStore(SqliteFile):
    """One database file: ``coe serve``'s default, in its state directory, so that a restart keeps
    the conversations."""

    kind = "sqlite"
    _TRIM_EVERY = 256  # puts between expiry and size sweeps
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, updated REAL, data TEXT)",
        "CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, id TEXT, updated REAL)",
        "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated)",
        "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created REAL, data TEXT)",
    )

    def __init__(self, path: Path, ttl_s: float, max_sessions: int, flush_s: float = 0.02) -> None:
        super().__init__(path, self.SCHEMA)
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.flush_s = flush_s
        self._puts = 0
        # Write-behind: a turn's record is written by a background task (one transaction for every
        # turn that ended within ``flush_s``, in a thread), not on the request path; until then
        # ``get`` answers from here, so the next turn still finds it.
        self._pending: dict[str, SessionRecord] = {}
        self._pending_alias: dict[str, tuple[str, float]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._write_failing = False
        self._broken = False  # the last store call failed: answer from the file, not from _pending

    async def get(self, session_id: str | None, alias: str | None) -> SessionRecord | None:
        oldest = time.time() - self.ttl_s
        sid = session_id
        if sid is None and alias is not None and (held := self._pending_alias.get(alias)) is not None:
            sid = held[0] if held[1] > oldest else None
        if sid is not None and (record := self._pending.get(sid)) is not None and not self._broken:
            return record.model_copy(deep=True) if record.updated > oldest else None

        def read(db: sqlite3.Connection) -> str | None:
            found = sid
            if found is None and alias is not None:
                row = db.execute(
                    "SELECT id FROM aliases WHERE alias = ? AND updated > ?", (alias, oldest)
                ).fetchone()
                found = row[0] if row else None
            if found is None:
                return None
            row = db.execute(
                "SELECT data FROM sessions WHERE id = ? AND updated > ?", (found, oldest)
            ).fetchone()
            return row[0] if row else None

        try:
            raw = self._run(read)
        except StoreUnavailable:
            self._broken = True  # a broken file fails every turn (stateless routing) until it answers
            raise
        self._broken = False
        return _parse(raw)

    async def put(self, record: SessionRecord, alias: str | None) -> None:
        self._pending[record.id] = record  # the caller is done with it (``get`` hands out copies)
        if alias is not None:
            self._pending_alias[alias] = (record.id, record.updated)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_s)
        await self.flush()

    async def flush(self) -> None:
        """Write the pending records now, in one transaction off the event loop. A failure is logged
        (once until a write succeeds): the answers went out, and the next turn routes statelessly."""
        if not self._pending and not self._pending_alias:
            return
        records, aliases = dict(self._pending), dict(self._pending_alias)
        self._puts += len(records)
        trim = self._puts >= self._TRIM_EVERY
        rows = [(r.id, r.updated, r.model_dump_json()) for r in records.values()]

        def write(db: sqlite3.Connection) -> None:
            with db:  # one transaction
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO sessions (id, updated, data) VALUES (?, ?, ?)", rows)
                db.executemany(
                    "INSERT OR REPLACE INTO aliases (alias, id, updated) VALUES (?, ?, ?)",
                    [(a, sid, at) for a, (sid, at) in aliases.items()],
                )
                if trim:
                    self._trim(db)

        try:
            await asyncio.to_thread(self._run, write)
        except StoreUnavailable as exc:
            if not self._write_failing:
                log.warning("session store cannot be written, %d turns not kept: %s", len(records), exc)
            self._write_failing = self._broken = True
        else:
            self._write_failing = False
            if trim:
                self._puts = 0
        for sid, record in records.items():  # newer turns that came meanwhile stay pending
            if self._pending.get(sid) is record:
                del self._pending[sid]
        for name, held in aliases.items():
            if self._pending_alias.get(name) == held:
                del self._pending_alias[name]

    async def aclose(self) -> None:
        if self._flush_task is not None and not self._flush_task.done():
            self._flush_task.cancel()
        await self.flush()
        await super().aclose()

    async def get_response(self, response_id: str) -> StoredResponse | None:
        oldest = time.time() - self.ttl_s
        row = self._run(
            lambda db: db.execute(
                "SELECT data FROM responses WHERE id = ? AND created > ?", (response_id, oldest)
            ).fetchone()
        )
        return _parse_response(row[0] if row else None)

    async def put_response(self, record: StoredResponse) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO responses (id, created, data) VALUES (?, ?, ?)",
                (record.id, record.created, record.model_dump_json()),
            )
        )

    def _trim(self, db: sqlite3.Connection) -> None:
        oldest = time.time() - self.ttl_s
        db.execute("DELETE FROM responses WHERE created <= ?", (oldest,))
        db.execute("DELETE FROM sessions WHERE updated <= ?", (oldest,))
        db.execute("DELETE FROM aliases WHERE updated <= ?", (oldest,))
        newest_first = "SELECT id FROM sessions ORDER BY updated DESC LIMIT -1 OFFSET ?"
        db.execute(f"DELETE FROM sessions WHERE id IN ({newest_first})", (self.max_sessions,))
        db.execute("DELETE FROM aliases WHERE id NOT IN (SELECT id FROM sessions)")

    async def list(self, limit: int) -> list[SessionRecord]:
        await self.flush()  # what is pending first
        oldest = time.time() - self.ttl_s
        rows = self._run(
            lambda db: db.execute(
                "SELECT data FROM sessions WHERE updated > ? ORDER BY updated DESC LIMIT ?", (oldest, limit)
            ).fetchall()
        )
        return [r for r in (_parse(row[0]) for row in rows) if r is not None]

    async def delete(self, session_id: str) -> bool:
        await self.flush()  # what is pending first

        def remove(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
            db.execute("DELETE FROM aliases WHERE id = ?", (session_id,))
            return bool(gone)

        return bool(self._run(remove))

    async def clear(self) -> int:
        await self.flush()  # what is pending first

        def wipe(db: sqlite3.Connection) -> int:
            n = db.execute("DELETE FROM sessions").rowcount
            db.execute("DELETE FROM aliases")
            db.execute("DELETE FROM responses")
            return int(n)

        return int(self._run(wipe))


class RedisStore(RedisClient):
    """Records and aliases expire with Redis's own TTL; a sorted set of ids by last turn bounds the
    count and orders ``list``."""

    kind = "redis"

    def __init__(
        self, url: str, ttl_s: float, max_sessions: int, timeout_s: float, prefix: str = "coe:"
    ) -> None:
        super().__init__(url, timeout_s, prefix)
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def get(self, session_id: str | None, alias: str | None) -> SessionRecord | None:
        async def read(r: Any) -> Any:
            sid = session_id
            if sid is None and alias is not None:
                found = await r.get(self._key("alias", alias))
                sid = found.decode() if found else None
            return await r.get(self._key("session", sid)) if sid is not None else None

        return _parse(await self._call(read))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        return _parse_response(await self._call(lambda r: r.get(self._key("response", response_id))))

    async def put_response(self, record: StoredResponse) -> None:
        key, data, ttl = self._key("response", record.id), record.model_dump_json(), max(1, int(self.ttl_s))
        await self._call(lambda r: r.set(key, data, ex=ttl))

    async def put(self, record: SessionRecord, alias: str | None) -> None:
        ttl = max(1, int(self.ttl_s))

        async def write(r: Any) -> None:
            index = self._key("index", "sessions")
            pipe = r.pipeline(transaction=False)
            pipe.set(self._key("session", record.id), record.model_dump_json(), ex=ttl)
            if alias is not None:
                pipe.set(self._key("alias", alias), record.id, ex=ttl)
            pipe.zadd(index, {record.id: record.updated})
            pipe.zremrangebyscore(index, "-inf", time.time() - self.ttl_s)
            pipe.zcard(index)
            *_, count = await pipe.execute()
            if count > self.max_sessions:
                evicted = await r.zpopmin(index, count - self.max_sessions)
                if evicted:
                    await r.delete(*(self._key("session", sid.decode()) for sid, _ in evicted))

        await self._call(write)

    async def list(self, limit: int) -> list[SessionRecord]:
        async def read(r: Any) -> Any:
            ids = await r.zrevrange(self._key("index", "sessions"), 0, limit - 1)
            return await r.mget([self._key("session", i.decode()) for i in ids]) if ids else []

        return [rec for rec in (_parse(raw) for raw in await self._call(read)) if rec is not None]

    async def delete(self, session_id: str) -> bool:
        async def remove(r: Any) -> Any:
            await r.zrem(self._key("index", "sessions"), session_id)
            return await r.delete(self._key("session", session_id))

        return bool(await self._call(remove))

    async def clear(self) -> int:
        async def wipe(r: Any) -> int:
            # Only its own kinds: the semantic cache may share the server and the prefix's root.
            keys = [
                k
                for kind in ("session", "alias", "index", "response")
                async for k in r.scan_iter(match=f"{self.prefix}{kind}:*")
            ]
            sessions = sum(1 for k in keys if k.decode().startswith(f"{self.prefix}session:"))
            if keys:
                await r.delete(*keys)
            return sessions

        return int(await self._call(wipe))


def dumps(records: list[SessionRecord]) -> str:
    """JSON lines for ``coe sessions list --json``, without the stored vectors."""
    return "\n".join(json.dumps(r.model_dump(exclude={"vector"})) for r in records)
