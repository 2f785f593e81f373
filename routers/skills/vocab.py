"""Build a skill vocabulary offline from validation or training prompts, without an LLM.

Why clusters of content words: an annotator LLM names skills ("genetics", "python") but costs one
generation per prompt, thousands of them for a training set. Instead the prompts' embeddings are
clustered (k-means), and each cluster contributes its most distinctive content words (frequent in
the cluster, rare elsewhere: a tf-idf score). Those words name the topics the prompts actually fall
into, are plain text (so an annotator's keywords map onto them at run time), and each is shared by
enough prompts for a +1/-1 score to mean something. Category or task names, when the data has
them, are added as they are ("high school biology").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from routers.skills.text import content_words

if TYPE_CHECKING:
    import numpy as np

    from routers.skills.keywords import Vocabulary


def humanize(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


def build_vocabulary(
    texts: Sequence[str],
    vectors: np.ndarray,
    categories: Sequence[str] | None = None,
    clusters: int = 24,
    per_cluster: int = 4,
    min_df: int = 3,
    seed: int = 0,
) -> list[str]:
    """Category names, then the top ``per_cluster`` distinctive words of each of ``clusters``
    k-means clusters of ``vectors`` (one row per text)."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = frozenset(ENGLISH_STOP_WORDS)
    words = [content_words(t, stop) for t in texts]
    df = Counter(w for ws in words for w in ws)
    n = len(texts)
    vocab = list(dict.fromkeys(humanize(c) for c in (categories or []) if c))
    count = max(1, min(clusters, n // max(min_df * 2, 1)))
    labels = [0] * n
    if count > 1:
        labels = list(KMeans(n_clusters=count, n_init=4, random_state=seed).fit_predict(vectors))
    for cluster in range(count):
        members = [words[i] for i in range(n) if labels[i] == cluster]
        inside = Counter(w for ws in members for w in ws)
        scored = sorted(
            ((c / len(members)) * math.log(n / df[w]), w) for w, c in inside.items() if c >= min_df
        )
        for _, word in reversed(scored[-per_cluster:]):
            if word not in vocab:
                vocab.append(word)
    return vocab


def vocabulary_keywords(
    texts: Sequence[str],
    categories: Sequence[str] | None,
    encode: Callable[[list[str]], np.ndarray],
    n: int,
) -> tuple[Vocabulary, list[list[str]]]:
    """The fast path's vocabulary from the texts, and each text's ``n`` nearest vocabulary
    keywords: the same steps for ``coe profile`` and the offline evaluation."""
    from routers.skills.keywords import Vocabulary

    vectors = encode(list(texts))
    words = build_vocabulary(texts, vectors, categories)
    vocab = Vocabulary(words, encode(words))
    return vocab, [[m.keyword for m in row] for row in vocab.nearest(vectors, n)]
