"""Per-expert concurrency limits with a bounded wait queue.

A llama.cpp expert has a fixed number of slots; sending it more requests only makes every request
slower. So each expert admits ``concurrency`` calls at once, lets ``queue`` more wait, and refuses
the rest at once (the server answers 429 with Retry-After) instead of letting latency grow unbounded.
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
    ) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self._on_reject = on_reject
        self._sems: dict[str, asyncio.Semaphore] = {}
        self.admitted: dict[str, int] = {}  # running + waiting, per expert

    @asynccontextmanager
    async def slot(self, name: str) -> AsyncIterator[None]:
        limit = self.concurrency.get(name, 8)
        if self.admitted.get(name, 0) >= limit + self.queue:
            if self._on_reject is not None:
                self._on_reject(name)
            raise ExpertBusy(name, retry_after_s=1)
        sem = self._sems.setdefault(name, asyncio.Semaphore(limit))
        self.admitted[name] = self.admitted.get(name, 0) + 1
        try:
            async with sem:
                yield
        finally:
            self.admitted[name] -= 1
