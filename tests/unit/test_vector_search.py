"""Few-query faiss searches run on one OpenMP thread and leave every thread's setting as it was."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from coe.encoding.search import FEW, search


@pytest.mark.parametrize("n_queries", [1, FEW, FEW + 5])
def test_search_returns_what_faiss_returns_and_restores_the_thread_count(n_queries: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((500, 16)).astype(np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(rows)
    queries = rng.standard_normal((n_queries, 16))  # float64: converted on the way in
    faiss.omp_set_num_threads(2)
    scores, ids = search(index, queries, 5)
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

    def other() -> None:
        before = faiss.omp_get_max_threads()
        search(index, np.eye(4)[:1], 1)
        seen.append(faiss.omp_get_max_threads() - before)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen == [0] and faiss.omp_get_max_threads() == 2
