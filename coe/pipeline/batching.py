"""Micro-batching of the router's CPU-bound work across concurrent requests.

Why: on a server every request routes on its own, so N requests in flight cost N hand-offs to a
worker thread and N router calls, each contending for the GIL with the event loop. Here the
requests that arrive while a batch is being routed wait for it to finish and then go together:
one thread hand-off and one ``router.route`` call for all of them.

Why no timed window: a window makes a lone request wait for batch-mates that never come. A batch
starts as soon as the previous one is done (at once when none is running), so concurrency 1 pays
nothing and the batch grows only with the load, up to ``max_batch`` requests.

Why the decision cannot depend on the batch-mates: the encoder embeds each prompt in its own
inference call (``embedder.batch_size``: 1 for ``onnx-int8``, whose int8 activations are quantised
with one scale per call; tests/unit/test_route_batching.py checks decisions batched against
unbatched). Each request's vectors go into its own request scope (``coe.encoding.embedder``), as
when it routed alone, so the semantic cache still reuses the router's vector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from coe.encoding.embedder import request_vectors, scope_into

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """``work(items)`` in a worker thread for the items of every ``submit`` that came while the
    previous call ran. ``work`` fills in the items (it returns nothing); an exception it raises
    fails every submission of its batch."""

    def __init__(self, work: Callable[[list[T]], None], max_batch: int = 64) -> None:
        self.work = work
        self.max_batch = max_batch
        self._waiting: list[tuple[Sequence[T], asyncio.Future[None], dict[Any, Any] | None]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # the drain running now (kept: tasks are weak)
        self.largest = 0  # the most submissions one batch served (tests and the bench read it)
        self.batches = 0

    async def submit(self, items: Sequence[T]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((items, done, request_vectors()))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                self.batches += 1
                self.largest = max(self.largest, len(batch))
                items = [item for group, _, _ in batch for item in group]
                scopes = [scope for _, _, scope in batch]
                try:
                    await asyncio.to_thread(self._run, items, scopes)
                except Exception as exc:
                    for _, done, _ in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for _, done, _ in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._running = False

    def _run(self, items: list[T], scopes: list[dict[Any, Any] | None]) -> None:
        """The work in one shared request scope, whose vectors then go to each request's own."""
        shared: dict[Any, Any] = {}
        with scope_into(shared):
            self.work(items)
        for scope in scopes:
            if scope is not None:
                scope.update(shared)
