"""``traces``: the trace store that records each request (``coe.traces``).

Off the request path and private by default: a record holds the decision, timings, tokens and a hash
of the prompt; the prompt and answer texts only with ``store_text: true``.
"""

from __future__ import annotations

from pydantic import Field

from coe.config.base import Strict


class TracesConfig(Strict):
    """Where and how long requests are recorded. ``coe serve`` records when ``enabled``; the library
    when ``CoE(config, traces=True)`` or ``enabled``."""

    enabled: bool = Field(True, description="record each request `coe serve` answers (the library: opt-in)")
    store_text: bool = Field(
        False,
        description="also keep the prompt and answer texts (needed by `coe judge` and `coe replay`); "
        "off: only a sha256 of the prompt (privacy)",
    )
    path: str | None = Field(
        None, description="the SQLite file (relative to this file); None: traces.db in the state directory"
    )
    max_age_days: float = Field(30.0, gt=0, description="records older than this are deleted")
    max_rows: int = Field(1_000_000, ge=1, description="at most this many records; the oldest go first")
    max_mb: float | None = Field(
        None, gt=0, description="at most this much disk (the database file); the oldest records go first"
    )
    queue_size: int = Field(
        10_000,
        ge=1,
        description="records waiting for the background writer; a full queue drops the record (counted)",
    )
