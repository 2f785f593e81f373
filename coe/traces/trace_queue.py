"""The background writer: records go into a bounded queue on the request path and one thread
writes them to the store in batches.

Why a thread and a bounded queue: a request must never wait for the disk. ``submit`` is a
non-blocking append; when the queue is full the record is dropped and counted (``on_drop``), and when
the store cannot write (disk full, unwritable path) the batch is dropped, counted, and logged once
until a write succeeds again. Requests never see either.

Why a deque and a timed wake rather than ``queue.Queue``: a ``Queue.put`` notifies the writer for
every record, so under load the writer woke once per request, took the GIL from the event loop and
committed batches of one (bench/line_rate.py's profile: the notify was a third of the request
path). Now a busy writer wakes every ``interval_s`` and writes what gathered; only an idle one is
woken by a record, so a lone request is still written at once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from coe.traces.record import TraceRecord
from coe.traces.store import TraceStore

log = logging.getLogger("coe.traces")
_BATCH = 256
_INTERVAL_S = 0.05  # while records keep coming: how long the writer lets a batch gather


class TraceQueue:
    def __init__(
        self,
        store: TraceStore,
        queue_size: int = 10_000,
        on_drop: Callable[[str, int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
        interval_s: float = _INTERVAL_S,
    ) -> None:
        """``on_drop(reason, n)``: reason ``queue_full`` or ``write_error``; ``on_write(n)``."""
        self.store = store
        self.queue_size = queue_size
        self.interval_s = interval_s
        self._items: deque[TraceRecord] = deque()
        self._markers: deque[threading.Event] = deque()  # flush() waiters
        self._wake = threading.Event()
        self._idle = True  # the writer waits for a wake, not for a timeout
        self._stop = False
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
        if len(self._items) >= self.queue_size:
            self._drop("queue_full", 1)
            return False
        self._items.append(record)
        if self._idle:  # appended first: a writer going idle re-checks the queue after saying so
            self._idle = False
            self._wake.set()
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued before this call is written (or dropped)."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._markers.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the store."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
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
            self._wake.wait(None if self._idle else self.interval_s)
            self._wake.clear()
            stop = self._stop
            markers = [self._markers.popleft() for _ in range(len(self._markers))]
            wrote = False
            while self._items:  # taken after the markers: a flush waits for what came before it
                batch = [self._items.popleft() for _ in range(min(_BATCH, len(self._items)))]
                self._write(batch)
                wrote = True
            for event in markers:
                event.set()
            if stop:
                return
            if not wrote:
                self._idle = True
                if self._items or self._markers:  # one arrived while going idle
                    self._idle = False

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
