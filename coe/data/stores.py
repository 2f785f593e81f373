"""The plumbing every shared store needs (the sessions and the semantic cache): one SQLite file on one
connection, or a Redis client bound to the running event loop, each turning any failure into
``StoreUnavailable``. Why one place: both stores degrade the same way (a note and a metric, never a
failed request), so they must fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store did not answer (down, unreachable, corrupt, too slow); ``str`` says why."""


class SqliteFile:
    """One database file, opened on first use with ``schema`` (CREATE ... IF NOT EXISTS statements).
    Queries are primary-key or index lookups on one connection, fast enough to run on the event loop;
    a corrupt or unwritable file raises StoreUnavailable, and the next call reopens it (the file may
    have been repaired or replaced)."""

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self.path = path
        self._schema = tuple(schema)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=1.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in self._schema:
                db.execute(statement)
            self._db = db
        return self._db

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._lock:
                return fn(self._conn())
        except (sqlite3.Error, OSError) as exc:
            self._db = None
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from None

    async def aclose(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisClient:
    """A Redis server shared by several processes. The client is created on first use, inside the
    running event loop (a client belongs to one loop), and every call is bounded by ``timeout_s``."""

    def __init__(self, url: str, timeout_s: float, prefix: str) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
            self._loop = loop
        return self._client

    async def _call(self, make: Callable[[Any], Any]) -> Any:
        try:
            import redis
        except ImportError:
            raise StoreUnavailable(
                "redis: the redis package is not installed (pip install 'coe[redis]')"
            ) from None
        try:
            return await asyncio.wait_for(make(self._redis()), self.timeout_s)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis {self.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            # RuntimeError: its loop is gone (a sync CoE closed after its loop); nothing to flush.
            with contextlib.suppress(RuntimeError):
                await client.aclose()
