"""The background writer: records go into a bounded queue on the request path and one thread
writes them to the store in batches.

Why a thread and a bounded queue: a request must never wait for the disk. ``submit`` is a
non-blocking put; when the queue is full the record is dropped and counted (``on_drop``), and when
the store cannot write (disk full, unwritable path) the batch is dropped, counted, and logged once
until a write succeeds again. Requests never see either.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from coe.traces.record import TraceRecord
from coe.traces.store import TraceStore

log = logging.getLogger("coe.traces")
_BATCH = 256


class TraceQueue:
    def __init__(
        self,
        store: TraceStore,
        queue_size: int = 10_000,
        on_drop: Callable[[str, int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        """``on_drop(reason, n)``: reason ``queue_full`` or ``write_error``; ``on_write(n)``."""
        self.store = store
        self._queue: queue.Queue[TraceRecord | threading.Event | None] = queue.Queue(queue_size)
        self._on_drop = on_drop
        self._on_write = on_write
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failing = False
        self.dropped: dict[str, int] = {"queue_full": 0, "write_error": 0}
        self.written = 0

    def submit(self, record: TraceRecord) -> bool:
        """Queue a record without waiting; False when the queue was full (the record is dropped)."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop("queue_full", 1)
            return False
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued before this call is written (or dropped)."""
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the store."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)
            self._thread = None
        self.store.close()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="coe-trace-writer", daemon=True)
                    self._thread.start()

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] += n
        if self._on_drop is not None:
            self._on_drop(reason, n)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[TraceRecord] = []
            events: list[threading.Event] = []
            stop = False
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for event in events:
                event.set()
            if stop:
                return

    def _write(self, batch: list[TraceRecord]) -> None:
        try:
            self.store.write(batch)
        except Exception as exc:  # sqlite3.Error, OSError: never let the thread die
            self._drop("write_error", len(batch))
            if not self._failing:
                log.warning(
                    "trace store %s cannot be written (%s): records are dropped", self.store.path, exc
                )
                self._failing = True
            return
        if self._failing:
            log.warning("trace store %s is written again", self.store.path)
            self._failing = False
        self.written += len(batch)
        if self._on_write is not None:
            self._on_write(len(batch))
