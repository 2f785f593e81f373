"""Elapsed time as the traces report it: milliseconds since a ``time.perf_counter()`` value.

One rounding for every stage (three decimals): the cache's lookups and the signal checks take well
under a millisecond, so two decimals would read as zero there."""

from __future__ import annotations

import time


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
