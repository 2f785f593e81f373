"""The trace store: each answered request as a ``TraceRecord``, user and judge feedback on it, and
what operators do with both (``coe traces``, ``coe replay``, ``coe judge``, ``coe fit-map
--from-traces``).

``Recorder`` is the request path's side: it builds a record from an Answer and hands it to the
background writer, never waiting for the disk. Replay, refit and judge live in their own modules and
load numpy, the router or an expert only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from coe.traces.record import (
    Feedback,
    ThumbsValue,
    TraceDecision,
    TraceRecord,
    build_record,
    new_id,
    score_of,
)
from coe.traces.store import TraceStore, store_path
from coe.traces.trace_queue import TraceQueue

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.types import Answer, Request

__all__ = [
    "Feedback",
    "Recorder",
    "ThumbsValue",
    "TraceDecision",
    "TraceQueue",
    "TraceRecord",
    "TraceStore",
    "UnknownTrace",
    "build_record",
    "feedback",
    "new_id",
    "open_store",
    "score_of",
    "store_path",
]


class UnknownTrace(KeyError):
    """Feedback named a response id the store does not hold."""


class Recorder:
    """Records answers for one registry: the store, its writer, and the text policy."""

    def __init__(
        self,
        config: CoEConfig,
        state_dir: Path,
        on_drop: Callable[[str, int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.store = TraceStore.from_config(config.traces, store_path(config, state_dir))
        self.writer = TraceQueue(self.store, config.traces.queue_size, on_drop, on_write)

    def record(
        self, rid: str, request: Request, answer: Answer, *, model: str = "coe", api: str | None = None
    ) -> bool:
        """Queue the record of one answer; False when it was dropped (queue full). Never raises
        for the store: a request must not fail because its trace could not be kept."""
        expert = self.config.experts.get(answer.expert)
        record = build_record(
            rid,
            request,
            answer,
            model=model,
            api=api,
            store_text=self.config.traces.store_text,
            params_b=expert.params_b if expert else None,
            price_per_mtok=expert.cost if expert else None,
        )
        return self.writer.submit(record)

    def feedback(self, item: Feedback) -> None:
        """Store a grade; UnknownTrace when no record has its id (after the queue is written, so
        feedback right after an answer finds it)."""
        if self.store.add_feedback(item):
            return
        self.writer.flush(timeout_s=2.0)
        if not self.store.add_feedback(item):
            raise UnknownTrace(item.id)

    def close(self) -> None:
        self.writer.close()


def open_store(config: CoEConfig) -> TraceStore:
    """The store ``coe serve`` writes for this registry (``traces.path`` or the state directory)."""
    from coe.experts.statedir import state_dir

    return TraceStore.from_config(config.traces, store_path(config, state_dir(config)))


def feedback(
    rid: str,
    score: float | None = None,
    *,
    thumbs: ThumbsValue | None = None,
    label: str | None = None,
    config: CoEConfig | str | Path = "experts.yaml",
) -> Feedback:
    """Grade a recorded response (its id, as the API or ``Answer.trace.id`` returned it) with a score
    in [0, 1] or thumbs, in the store of ``config``. KeyError (UnknownTrace) when no record has that id."""
    from coe.config import load_config

    cfg = config if not isinstance(config, str | Path) else load_config(config)
    item = Feedback(id=rid, score=score_of(score, thumbs), label=label)
    store = open_store(cfg)
    try:
        if not store.add_feedback(item):
            raise UnknownTrace(rid)
    finally:
        store.close()
    return item
