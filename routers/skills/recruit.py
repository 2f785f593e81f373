"""Recruitment arithmetic of Symbolic-MoE, with a dynamic number of experts. Pure numpy, no I/O,
so the skills router and the offline evaluation run exactly the same code.

For a prompt with keywords K and a score matrix S (experts x vocabulary, +1 right / -1 wrong):

* local suitability  l_m = sum_{k in K} S[m, k]
* global competence  g_m = sum over the whole vocabulary of S[m, :], shifted positive
  (x - min + 1 when any is negative), raised to ``sharpness`` and normalised to sum to 1
* weight             w_m = l_m * g_m over the experts with l_m > 0; when no expert has l_m > 0, every
  expert's l_m is shifted to l_m - min + 1 (the least unsuitable, globally strong experts lead)
* recruit the top k by weight; or sample k with replacement from w (the paper); or, with dynamic k,
  the fewest experts whose cumulative normalised weight passes ``top_p``, kept within min_k..max_k.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

KSpec = int | Literal["dynamic"]


def shift_positive(values: np.ndarray) -> np.ndarray:
    """The paper's shift: leave non-negative scores alone, else x - min + 1 (all at least 1)."""
    low = float(values.min()) if values.size else 0.0
    return values - low + 1.0 if low < 0 else values.astype(float)


def global_competence(scores: np.ndarray, sharpness: float = 2.0) -> np.ndarray:
    """Per expert: total score over all keywords, shifted positive, sharpened, normalised."""
    import numpy as np

    sharpened = shift_positive(scores.sum(axis=1)) ** sharpness
    total = float(sharpened.sum())
    if total <= 0:
        return np.full(scores.shape[0], 1.0 / max(scores.shape[0], 1))
    return sharpened / total


def local_suitability(scores: np.ndarray, keyword_index: Sequence[int]) -> np.ndarray:
    import numpy as np

    if not keyword_index:
        return np.zeros(scores.shape[0])
    summed: np.ndarray = scores[:, sorted(set(keyword_index))].sum(axis=1)
    return summed


def recruit_weights(local: np.ndarray, glob: np.ndarray) -> tuple[np.ndarray, bool]:
    """Normalised weights, and whether the no-suitable-expert shift was needed."""
    import numpy as np

    positive = local > 0
    shifted = not bool(positive.any())
    raw = (local - local.min() + 1.0) * glob if shifted else np.where(positive, local * glob, 0.0)
    total = float(raw.sum())
    return (raw / total if total > 0 else np.full(len(raw), 1.0 / max(len(raw), 1))), shifted


@dataclass
class Recruitment:
    """Indices recruited, in order (repeats possible when sampling), and how k was decided."""

    chosen: list[int]
    rule: str
    cumulative: float


def dynamic_count(weights: np.ndarray, top_p: float, min_k: int, max_k: int) -> tuple[int, float]:
    """Fewest experts (by weight) whose cumulative weight reaches top_p, clamped to min_k..max_k and
    to the number of experts with a positive weight."""
    import numpy as np

    ordered = np.sort(weights[weights > 0])[::-1]
    available = len(ordered)
    cumulative = np.cumsum(ordered)
    reach = int(np.searchsorted(cumulative, top_p - 1e-9) + 1) if available else 0
    count = max(min_k, min(max_k, reach))
    count = min(count, available) if available else 0
    return count, float(cumulative[count - 1]) if count else 0.0


def select(
    weights: np.ndarray,
    k: KSpec,
    top_p: float = 0.5,
    min_k: int = 1,
    max_k: int = 3,
    sampling: bool = False,
    seed: int | None = None,
) -> Recruitment:
    """Choose experts from normalised weights. Ties in weight go to the lower index (profile order)."""
    import numpy as np

    order = [int(i) for i in np.argsort(-weights, kind="stable") if weights[i] > 0]
    if k == "dynamic":
        count, cumulative = dynamic_count(weights, top_p, min_k, max_k)
        rule = f"dynamic k={count}: cumulative weight {cumulative:.2f}, top_p {top_p:g}, k {min_k}..{max_k}"
    else:
        count = min(int(k), len(order)) if not sampling else int(k)
        cumulative = float(weights[order[:count]].sum())
        rule = f"top-{k}" if count == k else f"top-{k}: only {count} expert(s) have a positive weight"
    if not sampling or not order:
        return Recruitment(order[:count], rule, cumulative)
    rng = np.random.default_rng(seed)
    p = weights[order] / weights[order].sum()
    drawn = [order[int(i)] for i in rng.choice(len(order), size=count, replace=True, p=p)]
    return Recruitment(drawn, f"{rule}; sampled with replacement", float(weights[sorted(set(drawn))].sum()))


def prompt_seed(seed: int, text: str) -> int:
    """Sampling is seeded by the prompt, so the same prompt always recruits the same experts."""
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16)


def score_matrix(keyword_index: Sequence[Sequence[int]], correct: np.ndarray, n_vocab: int) -> np.ndarray:
    """Profiles: S[m, v] = sum over questions with keyword v of +1 (expert m right) or -1 (wrong).

    ``correct`` is questions x experts (bool); a keyword counts once per question."""
    import numpy as np

    signs = np.where(correct, 1.0, -1.0)
    scores = np.zeros((correct.shape[1], n_vocab))
    for q, index in enumerate(keyword_index):
        for v in set(index):
            scores[:, v] += signs[q]
    return scores


@dataclass
class Choice:
    """One prompt's recruitment and the numbers behind it (for the trace)."""

    local: np.ndarray
    weights: np.ndarray
    shifted: bool
    recruitment: Recruitment


@dataclass
class Recruiter:
    """Profiles of ``experts`` over a vocabulary, and the recruitment settings."""

    experts: list[str]
    scores: np.ndarray
    k: KSpec = "dynamic"
    top_p: float = 0.5
    min_k: int = 1
    max_k: int = 3
    sampling: bool = False
    seed: int = 0
    sharpness: float = 2.0

    def __post_init__(self) -> None:
        self.glob = global_competence(self.scores, self.sharpness)

    def recruit(self, keyword_index: Sequence[int], text: str = "") -> Choice:
        local = local_suitability(self.scores, keyword_index)
        weights, shifted = recruit_weights(local, self.glob)
        seed = prompt_seed(self.seed, text) if self.sampling else None
        chosen = select(weights, self.k, self.top_p, self.min_k, self.max_k, self.sampling, seed)
        return Choice(local, weights, shifted, chosen)
