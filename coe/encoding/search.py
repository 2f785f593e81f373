"""faiss searches for a few queries run on one OpenMP thread.

Why: a router searches for one prompt at a time, next to llama.cpp experts that keep every core busy.
faiss parallelises even a single query over its OpenMP team, and the team waits at a barrier for
threads the OS has descheduled: on a busy small machine one thread is several times faster at the
tail, and no slower when idle (docs/decisions/faiss-one-thread.md). Batches (training, evaluation,
indexing) keep every thread.

OpenMP's thread count is per calling thread, so setting it here never changes another thread's searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEW = 20  # up to this many queries, one thread (faiss's own BLAS threshold is 20 as well)


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` on float32 contiguous queries; one OpenMP thread for ``FEW`` queries or fewer."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    found: tuple[np.ndarray, np.ndarray]
    if len(queries) > FEW:
        found = index.search(queries, k)
        return found
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        found = index.search(queries, k)
        return found
    finally:
        faiss.omp_set_num_threads(before)


class ExactSearch:
    """Exact inner-product search over fixed rows (cosine, on unit vectors). faiss is imported and
    the index built on the first query, so loading an artefact stays cheap."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._index: Any = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            import faiss

            index = faiss.IndexFlatIP(self.vectors.shape[1])
            index.add(self.vectors)
            self._index = index
        return search(self._index, queries, k)
