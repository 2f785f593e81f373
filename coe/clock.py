"""Time as the trace and the commands show it: one rounding for every stage's milliseconds, one format
for a stored record's wall-clock time, so two stages or two commands never disagree on either.

Milliseconds keep three decimals: a cache or session lookup takes well under one, and two decimals
would report many of them as 0.0.
"""

from __future__ import annotations

import datetime
import time


def ms_since(t: float) -> float:
    """Milliseconds elapsed since ``t``, a ``time.perf_counter()`` value."""
    return round((time.perf_counter() - t) * 1000, 3)


def local_time(t: float) -> str:
    """A ``time.time()`` value as local ISO time to the second, as ``coe sessions|traces list`` print it."""
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")
