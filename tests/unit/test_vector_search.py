"""Few-query faiss searches run on one OpenMP thread and leave every thread's setting as it was."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from coe.encoding.search import FEW, search


class _Watched:
    """A faiss index that records the OpenMP team size each search runs with."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.threads: list[int] = []

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        self.threads.append(faiss.omp_get_max_threads())
        found: tuple[np.ndarray, np.ndarray] = self.index.search(queries, k)
        return found


@pytest.mark.parametrize(("n_queries", "team"), [(1, 1), (FEW, 1), (FEW + 5, 2)])
def test_few_queries_search_on_one_thread_then_restore_the_thread_count(n_queries: int, team: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((500, 16)).astype(np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(rows)
    queries = rng.standard_normal((n_queries, 16))  # float64: converted on the way in
    faiss.omp_set_num_threads(2)
    watched = _Watched(index)
    scores, ids = search(watched, queries, 5)
    assert watched.threads == [team]  # one thread for a router's few prompts, the whole team for batches
    assert faiss.omp_get_max_threads() == 2
    expected_scores, expected_ids = index.search(queries.astype(np.float32), 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)


def test_a_search_in_one_thread_leaves_the_others_alone() -> None:
    """The server routes in worker threads: their searches must not change the main thread's team."""
    import faiss

    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    faiss.omp_set_num_threads(2)
    seen: list[int] = []

    watched = _Watched(index)

    def other() -> None:
        before = faiss.omp_get_max_threads()
        search(watched, np.eye(4)[:1], 1)
        seen.append(faiss.omp_get_max_threads() - before)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert watched.threads == [1] and seen == [0] and faiss.omp_get_max_threads() == 2
