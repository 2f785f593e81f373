"""Per-expert concurrency limits with a bounded wait queue.

A llama.cpp expert has a fixed number of slots; sending it more requests only makes every request
slower. So each expert admits ``concurrency`` calls at once, lets ``queue`` more wait, and refuses
the rest at once (the server answers 429 with Retry-After) instead of letting latency grow unbounded.

Experts that share one process (LoRA adapters of one base, coe.experts.groups) share its slots: the
limit is the process's (its ``parallel``), and every expert of it draws on the same slots and queue,
since the engine's slots are the process's, whichever adapter a request uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from coe.errors import CoEError


class ExpertBusy(CoEError):
    """The expert's slots and queue are full. Not an ExpertError: CoE must not fall back on it."""

    def __init__(self, expert: str, retry_after_s: int) -> None:
        self.expert = expert
        self.retry_after_s = retry_after_s
        super().__init__(f"expert {expert!r} is at its concurrency and queue limit; retry later")


class ExpertLimiter:
    def __init__(
        self,
        concurrency: dict[str, int],
        queue: int,
        on_reject: Callable[[str], None] | None = None,
        process_of: Callable[[str], str] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self._on_reject = on_reject
        self._process_of = process_of or (lambda name: name)
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.admitted: dict[str, int] = {}  # running + waiting, per process

    def in_flight(self, name: str) -> int:
        """Calls running or waiting on the expert's process (its group's, where it shares one)."""
        return self.admitted.get(self._process_of(name), 0)

    @asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        key = self._process_of(name)
        limit = self.concurrency.get(key, 8)
        if self.admitted.get(key, 0) >= limit + self.queue:
            if self._on_reject is not None:
                self._on_reject(name)
            raise ExpertBusy(name, retry_after_s=1)
        sem = self._sems.setdefault(key, asyncio.Semaphore(limit))
        self.admitted[key] = self.admitted.get(key, 0) + 1
        try:
            async with sem:
                yield
        finally:
            self.admitted[key] -= 1
