"""Character n-gram TF-IDF features, computed in plain Python so routing needs no scikit-learn.

A sparse encoding of text beside the sentence encoder, used by the category router's TF-IDF model
(``routers.category.text_classifier``) and the guard (``coe.signals.guard``): here, in the engine, so
the guard needs no strategy.

Why characters: benchmark prompts carry their domain in surface form (``\\frac``, ``def ``,
``mg/dL``, ``Statement 1 |``) and in word stems that a small sentence encoder smooths away. On our
validation split of router_mix, a logistic regression on these features alone scores about as well as
kNN on MiniLM embeddings at a fraction of its cost (docs/benchmarks), and the two err on different
prompts, which is what makes the cascade in ``routers.category.model`` work.

Features: lower-cased words padded with spaces, n-grams of 2..5 characters inside each word (like
scikit-learn's ``char_wb``), sublinear tf (1 + log tf), idf = ln((1 + n) / (1 + df)) + 1, L2 norm.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

NGRAMS = (2, 5)
TFIDF_MAX_CHARS = 1000
DEFAULT_MAX_FEATURES = 200_000


def _grams(text: str, lo: int, hi: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for word in text.lower().split():
        padded = f" {word} "
        size = len(padded)
        for n in range(lo, hi + 1):
            if n > size:
                break
            counts.update(padded[i : i + n] for i in range(size - n + 1))
    return counts


class CharNgramTfidf:
    """``transform_one(text) -> (column indices, values)``: a sparse, unit-norm row."""

    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, max_chars: int = TFIDF_MAX_CHARS) -> None:
        self.terms = list(vocabulary)
        self.index = {term: i for i, term in enumerate(self.terms)}
        self.idf = idf
        self.max_chars = max_chars
        self._idf_list = [float(x) for x in idf]

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        max_features: int = DEFAULT_MAX_FEATURES,
        min_df: int = 2,
        max_chars: int = TFIDF_MAX_CHARS,
    ) -> CharNgramTfidf:
        import numpy as np

        df: Counter[str] = Counter()
        n = 0
        for text in texts:
            df.update(_grams(text[:max_chars], *NGRAMS).keys())
            n += 1
        kept = [(term, c) for term, c in df.items() if c >= min_df]
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        kept = kept[:max_features]
        idf = np.array([math.log((1 + n) / (1 + c)) + 1.0 for _, c in kept], dtype=np.float32)
        return cls([t for t, _ in kept], idf, max_chars)

    def transform_one(self, text: str) -> tuple[list[int], list[float]]:
        cols: list[int] = []
        vals: list[float] = []
        index, idf = self.index, self._idf_list
        for term, tf in _grams(text[: self.max_chars], *NGRAMS).items():
            j = index.get(term)
            if j is not None:
                cols.append(j)
                vals.append((1.0 + math.log(tf)) * idf[j])
        norm = math.sqrt(sum(v * v for v in vals)) or 1.0
        return cols, [v / norm for v in vals]

    def transform(self, texts: Sequence[str]) -> Any:
        """A scipy CSR matrix (training only; routing uses ``transform_one``)."""
        import numpy as np
        from scipy.sparse import csr_matrix

        indptr, indices, data = [0], [], []
        for text in texts:
            cols, vals = self.transform_one(text)
            indices.extend(cols)
            data.extend(vals)
            indptr.append(len(indices))
        return csr_matrix(
            (np.array(data, dtype=np.float32), np.array(indices, dtype=np.int64), np.array(indptr)),
            shape=(len(texts), len(self.terms)),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        import numpy as np

        return {"terms": np.array(self.terms, dtype=np.str_), "idf": self.idf}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], max_chars: int) -> CharNgramTfidf:
        return cls([str(t) for t in arrays["terms"].tolist()], arrays["idf"], max_chars)
