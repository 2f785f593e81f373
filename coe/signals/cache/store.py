"""Where cached answers live: in process, SQLite (``coe serve``'s default, in the state directory
beside the sessions database) or the Redis the sessions use, when several replicas share answers.

Entries are grouped by scope key (``runtime.scope_key``): a lookup reads only the entries of its own
conversation, system prompt, tools and params, so a nearest neighbour is a numpy product over a few
vectors, never a search across conversations. A store that cannot answer raises
``StoreUnavailable`` (the sessions' own): the request then goes to its expert, uncached.

``probe`` is the lookup's one read: the exact entry and, where the store can list them cheaply, the
scope's candidates added since the caller's cursor. Redis answers both in one round trip (a network
hop per read is what a miss costs there); the in-process and SQLite stores list nothing
incrementally and the runtime re-reads their scope when its copy is stale.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pydantic import BaseModel, Field, ValidationError

from coe.data.stores import RedisClient, SqliteFile, StoreUnavailable

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CacheEntry",
    "CacheStore",
    "MemoryCache",
    "Probe",
    "RedisCache",
    "SqliteCache",
    "StoreUnavailable",
]


class CacheEntry(BaseModel):
    """One answer and what it answered."""

    id: str = Field(description="hash of the scope and the exact last user turn")
    scope: str
    text: str = Field(description="the last user turn it answered")
    vector: str | None = Field(None, description="the router's embedding of that turn, float16 base64")
    space: str | None = Field(None, description="the embedding space of vector")
    answer: dict[str, Any] = Field(description="text, tool_calls, expert, model, usage, finish_reason")
    created: float = Field(default_factory=time.time)

    @staticmethod
    def pack(vector: np.ndarray) -> str:
        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode()


class Candidate(NamedTuple):
    """What a nearest-neighbour lookup reads of an entry: never the answer (only the winner's is read)."""

    id: str
    text: str
    vector: bytes | None  # float16
    space: str | None


def _candidate(entry: CacheEntry) -> Candidate:
    vector = base64.b64decode(entry.vector) if entry.vector is not None else None
    return Candidate(entry.id, entry.text, vector, entry.space)


class Probe(NamedTuple):
    exact: CacheEntry | None
    added: list[Candidate] | None  # oldest first; None: this store lists no changes (re-read ``scope``)
    cursor: str | None  # where the next probe of the scope starts listing


class CacheStore(Protocol):
    kind: str

    async def exact(self, entry_id: str) -> CacheEntry | None: ...

    async def probe(self, entry_id: str, scope: str | None, cursor: str | None) -> Probe:
        """The exact entry and, when ``scope`` is given, its candidates added after ``cursor`` (all
        live ones when None)."""
        ...

    async def scope(self, scope: str) -> list[Candidate]: ...

    async def put(self, entry: CacheEntry) -> None: ...

    async def stats(self) -> dict[str, Any]: ...

    async def clear(self) -> int: ...

    async def aclose(self) -> None: ...


def _parse(raw: str | bytes | None) -> CacheEntry | None:
    if raw is None:
        return None
    try:
        return CacheEntry.model_validate_json(raw)
    except ValidationError:
        return None  # written by another version: a miss


class _ExactProbe:
    """A store whose scope listing the runtime re-reads when stale: a probe is the exact read."""

    async def exact(self, entry_id: str) -> CacheEntry | None:
        raise NotImplementedError

    async def probe(self, entry_id: str, scope: str | None, cursor: str | None) -> Probe:
        return Probe(await self.exact(entry_id), None, None)


class MemoryCache(_ExactProbe):
    kind = "memory"

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._scopes: dict[str, OrderedDict[str, CacheEntry]] = {}
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def _live(self, entry: CacheEntry) -> bool:
        return time.time() - entry.created < self.ttl_s

    async def exact(self, entry_id: str) -> CacheEntry | None:
        with self._lock:
            scope = self._ids.get(entry_id)
            entry = self._scopes.get(scope, OrderedDict()).get(entry_id) if scope else None
        return entry if entry is not None and self._live(entry) else None

    async def scope(self, scope: str) -> list[Candidate]:
        with self._lock:
            entries = list(self._scopes.get(scope, OrderedDict()).values())
        return [_candidate(e) for e in entries if self._live(e)]

    async def put(self, entry: CacheEntry) -> None:
        with self._lock:
            entries = self._scopes.setdefault(entry.scope, OrderedDict())
            entries[entry.id] = entry
            entries.move_to_end(entry.id)
            self._ids[entry.id] = entry.scope
            while len(entries) > self.max_entries:
                gone, _ = entries.popitem(last=False)
                self._ids.pop(gone, None)

    async def stats(self) -> dict[str, Any]:
        with self._lock:
            entries = [e for s in self._scopes.values() for e in s.values() if self._live(e)]
        return {"store": self.kind, "entries": len(entries), "scopes": len({e.scope for e in entries})}

    async def clear(self) -> int:
        with self._lock:
            n = len(self._ids)
            self._scopes.clear()
            self._ids.clear()
        return n

    async def aclose(self) -> None:
        return None


class SqliteCache(_ExactProbe, SqliteFile):
    """One database file; primary-key and scope-index lookups on one connection, like the sessions'
    SQLite store."""

    kind = "sqlite"
    _TRIM_EVERY = 256
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, scope TEXT, created REAL, "
        "text TEXT, space TEXT, vector BLOB, data TEXT)",
        "CREATE INDEX IF NOT EXISTS entries_scope ON entries(scope, created)",
    )

    def __init__(self, path: Path, ttl_s: float, max_entries: int) -> None:
        super().__init__(path, self.SCHEMA)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._puts = 0

    async def exact(self, entry_id: str) -> CacheEntry | None:
        oldest = time.time() - self.ttl_s
        row = self._run(
            lambda db: db.execute(
                "SELECT data FROM entries WHERE id = ? AND created > ?", (entry_id, oldest)
            ).fetchone()
        )
        return _parse(row[0]) if row else None

    async def scope(self, scope: str) -> list[Candidate]:
        oldest = time.time() - self.ttl_s
        rows = self._run(
            lambda db: db.execute(
                "SELECT id, text, vector, space FROM entries WHERE scope = ? AND created > ? "
                "ORDER BY created DESC LIMIT ?",
                (scope, oldest, self.max_entries),
            ).fetchall()
        )
        return [Candidate(*row) for row in rows]

    async def put(self, entry: CacheEntry) -> None:
        self._puts += 1
        trim = self._puts % self._TRIM_EVERY == 0

        def write(db: sqlite3.Connection) -> None:
            c = _candidate(entry)
            db.execute(
                "INSERT OR REPLACE INTO entries (id, scope, created, text, space, vector, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry.id, entry.scope, entry.created, c.text, c.space, c.vector, entry.model_dump_json()),
            )
            if trim:
                db.execute("DELETE FROM entries WHERE created <= ?", (time.time() - self.ttl_s,))

        self._run(write)

    async def stats(self) -> dict[str, Any]:
        oldest = time.time() - self.ttl_s
        n, scopes = self._run(
            lambda db: db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT scope) FROM entries WHERE created > ?", (oldest,)
            ).fetchone()
        )
        return {"store": self.kind, "path": str(self.path), "entries": int(n), "scopes": int(scopes)}

    async def clear(self) -> int:
        return int(self._run(lambda db: db.execute("DELETE FROM entries").rowcount))


class RedisCache(RedisClient):
    """Per scope a stream of its entries' candidates (``coe:cache:log:KEY``: id, text, vector, space),
    and each whole entry under ``coe:cache:entry:ID``; all expire with Redis's own TTL. A stream
    rather than a hash so that a lookup reads only what other replicas added since its last one:
    stream ids grow with time, and the reader keeps the last it saw."""

    kind = "redis"

    def __init__(
        self, url: str, ttl_s: float, max_entries: int, timeout_s: float, prefix: str = "coe:cache:"
    ) -> None:
        super().__init__(url, timeout_s, prefix)
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def _live(self, entry: CacheEntry | None) -> CacheEntry | None:
        return entry if entry is not None and time.time() - entry.created < self.ttl_s else None

    async def exact(self, entry_id: str) -> CacheEntry | None:
        return self._live(_parse(await self._call(lambda r: r.get(f"{self.prefix}entry:{entry_id}"))))

    async def probe(self, entry_id: str, scope: str | None, cursor: str | None) -> Probe:
        if scope is None:
            return Probe(await self.exact(entry_id), None, None)
        oldest = f"{int((time.time() - self.ttl_s) * 1000)}-0"
        start = _after(cursor) if cursor is not None else oldest

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(f"{self.prefix}entry:{entry_id}")
            pipe.xrange(f"{self.prefix}log:{scope}", min=start, max="+")
            return list(await pipe.execute())

        raw, rows = await self._call(read)
        added = [
            Candidate(
                f[b"id"].decode(), f[b"text"].decode(), f.get(b"vector") or None, _text(f.get(b"space"))
            )
            for _, f in rows
        ]
        last = rows[-1][0].decode() if rows else cursor
        return Probe(self._live(_parse(raw)), added, last)

    async def scope(self, scope: str) -> list[Candidate]:
        probe = await self.probe("", scope, None)
        return list(reversed(probe.added or []))[: self.max_entries]

    async def put(self, entry: CacheEntry) -> None:
        ttl = max(1, int(self.ttl_s))
        c = _candidate(entry)
        fields = {"id": c.id, "text": c.text, "vector": c.vector or b"", "space": c.space or ""}

        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            log = f"{self.prefix}log:{entry.scope}"
            pipe.xadd(log, fields, maxlen=self.max_entries, approximate=True)
            pipe.expire(log, ttl)
            pipe.set(f"{self.prefix}entry:{entry.id}", entry.model_dump_json(), ex=ttl)
            await pipe.execute()

        await self._call(write)

    async def stats(self) -> dict[str, Any]:
        async def count(r: Any) -> tuple[int, int]:
            scopes = [k async for k in r.scan_iter(match=f"{self.prefix}log:*")]
            n = len([k async for k in r.scan_iter(match=f"{self.prefix}entry:*")])
            return n, len(scopes)

        n, scopes = await self._call(count)
        return {"store": self.kind, "url": self.url, "entries": n, "scopes": scopes}

    async def clear(self) -> int:
        async def wipe(r: Any) -> int:
            keys = [k async for k in r.scan_iter(match=f"{self.prefix}*")]
            ids = sum(1 for k in keys if k.decode().startswith(f"{self.prefix}entry:"))
            if keys:
                await r.delete(*keys)
            return ids

        return int(await self._call(wipe))


def _after(stream_id: str) -> str:
    """The smallest stream id after ``stream_id`` (``XRANGE (id`` needs Redis 6.2)."""
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw else None
