"""The embedded trace store: one SQLite file (``traces.db`` in the state directory by default).

Records are JSON in one table keyed by response id, with the columns queries filter on beside them;
feedback rows in a second table. Retention runs every few hundred writes: records older than
``max_age_days`` go, then the oldest beyond ``max_rows``, then the oldest while the file is larger than
``max_mb`` (SQLite reuses the freed pages, so the file stops growing rather than shrinking).

Writes come from one thread (coe.traces.trace_queue); reads (``coe traces``, feedback, replay) may come from
others, so every call takes the lock. Errors are ``sqlite3.Error`` or ``OSError``: the writer counts
them, the commands report them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from coe.traces.record import Feedback, TraceRecord

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.config.traces import TracesConfig


def store_path(config: CoEConfig, state_dir: Path) -> Path:
    """``traces.path`` (relative to the registry file), else traces.db in the state directory."""
    cfg = config.traces
    return config.resolve_path(cfg.path) if cfg.path else state_dir / "traces.db"


class TraceStore:
    _TRIM_EVERY = 512  # records written between retention sweeps

    def __init__(
        self,
        path: Path,
        max_age_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_mb: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_age_days = max_age_days
        self.max_rows = max_rows
        self.max_mb = max_mb
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._since_trim = 0

    @classmethod
    def from_config(cls, cfg: TracesConfig, path: Path) -> TraceStore:
        return cls(path, cfg.max_age_days, cfg.max_rows, cfg.max_mb)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS traces (id TEXT PRIMARY KEY, time REAL, expert TEXT, "
                "category TEXT, data TEXT)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS traces_time ON traces(time)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS feedback "
                "(id TEXT, score REAL, label TEXT, source TEXT, time REAL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS feedback_id ON feedback(id)")
            self._db = db
        return self._db

    def _reset(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    # ------------------------------------------------------------------------------- writing

    def write(self, records: Sequence[TraceRecord]) -> None:
        """Insert (or replace) records in one transaction; a retention sweep every few hundred."""
        rows = [
            (r.id, r.time, r.expert, r.decision.category if r.decision else None, r.model_dump_json())
            for r in records
        ]
        with self._lock:
            try:
                db = self._conn()
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO traces VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
                self._since_trim += len(rows)
                if self._since_trim >= self._TRIM_EVERY:
                    self._since_trim = 0
                    self._trim(db)
            except (sqlite3.Error, OSError):
                self._reset()  # reopen next time: the disk may have been repaired
                raise

    def trim(self) -> None:
        with self._lock:
            self._trim(self._conn())

    def _trim(self, db: sqlite3.Connection) -> None:
        oldest = time.time() - self.max_age_days * 86_400
        db.execute("DELETE FROM traces WHERE time < ?", (oldest,))
        db.execute(
            "DELETE FROM traces WHERE id IN (SELECT id FROM traces ORDER BY time DESC LIMIT -1 OFFSET ?)",
            (self.max_rows,),
        )
        if self.max_mb is not None:
            limit = self.max_mb * 1024 * 1024
            for _ in range(20):  # each pass drops the oldest tenth
                used = _used_bytes(db)
                count = db.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
                if used <= limit or count == 0:
                    break
                db.execute(
                    "DELETE FROM traces WHERE id IN (SELECT id FROM traces ORDER BY time LIMIT ?)",
                    (max(1, count // 10),),
                )
        db.execute("DELETE FROM feedback WHERE id NOT IN (SELECT id FROM traces)")

    def add_feedback(self, feedback: Feedback) -> bool:
        """Store a grade; False (nothing stored) when no record has that id."""
        with self._lock:
            db = self._conn()
            if db.execute("SELECT 1 FROM traces WHERE id = ?", (feedback.id,)).fetchone() is None:
                return False
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                (feedback.id, feedback.score, feedback.label, feedback.source, feedback.time),
            )
            return True

    # ------------------------------------------------------------------------------- reading

    def get(self, rid: str) -> TraceRecord | None:
        with self._lock:
            row = self._conn().execute("SELECT data FROM traces WHERE id = ?", (rid,)).fetchone()
        return TraceRecord.model_validate_json(row[0]) if row else None

    def recent(self, limit: int = 50) -> list[TraceRecord]:
        """The most recent records first."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT data FROM traces ORDER BY time DESC LIMIT ?", (limit,))
                .fetchall()
            )
        return [TraceRecord.model_validate_json(r[0]) for r in rows]

    def records(self, batch: int = 5000) -> Iterator[TraceRecord]:
        """Every record, oldest first, read in batches (an export or a replay of a large store)."""
        last_time, last_id = -1.0, ""
        while True:
            with self._lock:
                rows = (
                    self._conn()
                    .execute(
                        "SELECT time, id, data FROM traces WHERE (time, id) > (?, ?) "
                        "ORDER BY time, id LIMIT ?",
                        (last_time, last_id, batch),
                    )
                    .fetchall()
                )
            if not rows:
                return
            for _t, _rid, data in rows:
                yield TraceRecord.model_validate_json(data)
            last_time, last_id = rows[-1][0], rows[-1][1]

    def feedback(self, rid: str | None = None) -> list[Feedback]:
        query, args = "SELECT id, score, label, source, time FROM feedback", tuple[str, ...]()
        if rid is not None:
            query, args = query + " WHERE id = ?", (rid,)
        with self._lock:
            rows = self._conn().execute(query + " ORDER BY time", args).fetchall()
        return [Feedback(id=r[0], score=r[1], label=r[2], source=r[3], time=r[4]) for r in rows]

    def feedback_means(
        self, column: Literal["expert", "category"], last: int = 5000
    ) -> dict[str, tuple[float, int]]:
        """Mean grade and count per answering expert or per category ("none": no category) over the
        latest ``last`` grades, in one query (the dashboard asks every few seconds)."""
        query = (
            f"SELECT COALESCE(t.{column}, 'none'), AVG(f.score), COUNT(*) "
            "FROM (SELECT id, score FROM feedback ORDER BY time DESC LIMIT ?) f "
            "JOIN traces t ON t.id = f.id GROUP BY 1 ORDER BY 1"
        )
        with self._lock:
            rows = self._conn().execute(query, (last,)).fetchall()
        return {str(name): (float(mean), int(n)) for name, mean, n in rows}

    def count(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT COUNT(*) FROM traces").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._reset()


def _used_bytes(db: sqlite3.Connection) -> int:
    pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * db.execute("PRAGMA page_size").fetchone()[0])


def mean_scores(feedback: Sequence[Feedback]) -> dict[str, float]:
    """Per record id, the mean of its grades (a record graded twice counts once)."""
    sums: dict[str, list[float]] = {}
    for f in feedback:
        sums.setdefault(f.id, []).append(f.score)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def read_jsonl(path: Path) -> tuple[list[TraceRecord], list[Feedback]]:
    """An export (``coe traces export --format jsonl``): record lines, and feedback lines
    (``{"feedback": {...}}``) if the export kept them."""
    records, feedback = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "feedback" in row and "id" not in row:
                    feedback.append(Feedback.model_validate(row["feedback"]))
                else:
                    records.append(TraceRecord.model_validate(row))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a trace record: {str(exc).splitlines()[0]}") from None
    return records, feedback
