"""The one rounding of a stage's milliseconds: a sub-millisecond step (a cache or session lookup)
shows as what it took, not as 0.0."""

from __future__ import annotations

import datetime

import pytest

from coe import clock


def test_milliseconds_keep_three_decimals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock.time, "perf_counter", lambda: 100.0 + 0.000_456_7)
    assert clock.ms_since(100.0) == 0.457
    monkeypatch.setattr(clock.time, "perf_counter", lambda: 100.0 + 12.345_678_9)
    assert clock.ms_since(100.0) == 12345.679


def test_local_time_is_iso_to_the_second() -> None:
    t = datetime.datetime(2026, 3, 4, 5, 6, 7, 890_000).timestamp()
    assert clock.local_time(t) == "2026-03-04T05:06:07"
