"""Decisions of the expert pool and the batch runner, as pure functions (no I/O, easy to test).

* which loaded expert to evict (``lru`` or ``lookahead``),
* which waiting expert to load next when memory must be freed for it,
* in which order a batch runs its per-expert groups.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

Policy = Literal["lru", "lookahead"]


def next_use(name: str, upcoming: Sequence[str]) -> float:
    """Position of the expert's next use in the known queue; infinity when it is not in it."""
    try:
        return float(upcoming.index(name))
    except ValueError:
        return math.inf


def rank_victims(
    candidates: Collection[str],
    *,
    policy: Policy,
    last_used: Mapping[str, float],
    upcoming: Sequence[str] = (),
) -> list[str]:
    """Evict first what comes first here.

    lru: the least recently used. lookahead (Belady's rule on the queue we know): the expert whose next
    use is furthest away, one never used again first; ties go to the least recently used."""
    by_age = sorted(candidates, key=lambda n: (last_used.get(n, 0.0), n))
    if policy == "lru":
        return by_age
    return sorted(by_age, key=lambda n: -next_use(n, upcoming))


def choose_load(waiting: Mapping[str, Sequence[float]], *, now: float, max_wait_s: float) -> str | None:
    """Which expert gets the memory when several wait for it: one whose oldest request waited
    longer than ``max_wait_s`` (the oldest such first, so none starves), else the one with the most
    waiting requests (one load serves them all), else the one waiting longest."""
    queued = {name: min(times) for name, times in waiting.items() if times}
    if not queued:
        return None
    starved = [n for n, t in queued.items() if now - t >= max_wait_s]
    if starved:
        return min(starved, key=lambda n: (queued[n], n))
    return min(queued, key=lambda n: (-len(waiting[n]), queued[n], n))


def order_groups(sizes: Mapping[str, int], loaded: Collection[str] = ()) -> list[str]:
    """The order in which a batch runs its per-expert groups: experts already loaded first (they
    cost no load), then the larger groups; each group is drained before the next one starts, so
    every expert is loaded once."""
    return sorted((n for n, size in sizes.items() if size), key=lambda n: (n not in loaded, -sizes[n], n))
