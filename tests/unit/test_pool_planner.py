"""The pool's and the batch runner's decisions, as pure functions (no processes)."""

from __future__ import annotations

from coe.experts.planner import choose_load, order_groups, rank_victims


def test_lru_evicts_the_least_recently_used() -> None:
    last_used = {"a": 3.0, "b": 1.0, "c": 2.0}
    assert rank_victims(["a", "b", "c"], policy="lru", last_used=last_used) == ["b", "c", "a"]


def test_lookahead_evicts_the_expert_whose_next_use_is_furthest() -> None:
    last_used = {"a": 1.0, "b": 2.0, "c": 3.0}
    upcoming = ["c", "a", "c", "b"]
    assert rank_victims(["a", "b", "c"], policy="lookahead", last_used=last_used, upcoming=upcoming) == [
        "b", "a", "c",
    ]  # fmt: skip
    # Experts not in the known queue go first, the least recently used of them first.
    assert rank_victims(["a", "b", "c"], policy="lookahead", last_used=last_used, upcoming=["a"]) == [
        "b", "c", "a",
    ]  # fmt: skip


def test_the_expert_with_most_waiting_requests_loads_first() -> None:
    waiting = {"a": [5.0], "b": [6.0, 6.1, 6.2], "c": [7.0, 7.1]}
    assert choose_load(waiting, now=8.0, max_wait_s=30) == "b"


def test_a_request_past_max_wait_goes_first_so_none_starves() -> None:
    waiting = {"rare": [1.0], "popular": [20.0, 20.5, 21.0, 21.5]}
    assert choose_load(waiting, now=25.0, max_wait_s=30) == "popular"
    assert choose_load(waiting, now=31.5, max_wait_s=30) == "rare"
    assert choose_load({"a": []}, now=1.0, max_wait_s=1) is None


def test_groups_run_loaded_experts_first_then_larger_groups() -> None:
    sizes = {"small": 2, "big": 40, "loaded": 5, "empty": 0}
    assert order_groups(sizes, loaded=["loaded"]) == ["loaded", "big", "small"]
