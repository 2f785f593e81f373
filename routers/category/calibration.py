"""What a registry's own examples say about confidence: the softmax temperature and the scope floor.

Why a prior on the temperature: leave-one-out on a handful of examples is a handful of points. When
they all come out right (two categories, three examples each) the log loss keeps falling as the
temperature does, and the fitted temperature ran to the bottom of the grid: p = 1.00 for nonsense.
The temperature that calibrates the packaged encoder's similarities is, in fact, nearly the same in
every registry (measured on CLINC150's train side, prompts never used as examples: ``bench/confidence.py
--fit-prior``), so the fit is the maximum a posteriori temperature under a log-normal prior around
that value: many examples move it where they say, a few cannot push it to an extreme.

Why a floor: a softmax over categories always sums to one, so a prompt close to none of them can
still get a confident category. The floor is a low quantile of the examples' own leave-one-out
similarity to their category (each example against the centroid of the others), so it follows how
tight the registry's categories are instead of being a fixed number; ``fallback.min_similarity`` sets
it by hand.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Log-normal priors on the temperature, per classifier: the geometric mean of the best temperature
# over train-side registries and the spread of its logarithm (bench/confidence.py --fit-prior).
PRIORS: dict[str, tuple[float, float]] = {"centroid": (0.083, 0.31), "knn": (0.065, 0.28)}
TEMPERATURE_GRID = np.geomspace(0.005, 1.0, 120)
# The share of the examples' leave-one-out similarities below the floor.
FLOOR_QUANTILE = 0.05


def map_temperature(probs_at: Callable[[float], np.ndarray], y: np.ndarray, kind: str) -> float:
    """The grid temperature maximising the leave-one-out log-likelihood of ``probs_at(t)`` (rows of
    held-out probabilities) plus the log prior of ``kind``; with no rows, the prior's centre."""
    centre, spread = PRIORS[kind]
    if len(y) == 0:
        return centre
    rows = np.arange(len(y))
    best, best_loss = centre, np.inf
    for t in TEMPERATURE_GRID:
        p = probs_at(float(t))[rows, y]
        loss = -np.sum(np.log(np.maximum(p, 1e-12))) + np.log(t / centre) ** 2 / (2 * spread**2)
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best


@dataclass(frozen=True)
class ScopeFloor:
    """How close (raw cosine) a prompt must be to some category's centroid to be in scope.

    ``centroids`` are the unit means of each category's raw (uncentred) example vectors: the centred
    space the centroid classifier uses separates categories well but says little about distance from
    all of them (measured: a worse out-of-scope AUROC)."""

    centroids: np.ndarray  # (categories, dim), unit rows
    floor: float
    fitted: bool  # False: set in the registry

    @property
    def active(self) -> bool:
        """A floor of 0 (set so, or no category with two examples to fit one on) sends nothing away."""
        return self.floor > 0

    def closeness(self, vectors: np.ndarray) -> np.ndarray:
        """Each prompt's highest similarity to a category centroid."""
        top: np.ndarray = (vectors @ self.centroids.T).max(axis=1)
        return top

    @classmethod
    def fit(cls, vectors: np.ndarray, y: np.ndarray, n_labels: int, floor: float | None) -> ScopeFloor:
        sums = np.stack([vectors[y == k].sum(axis=0) for k in range(n_labels)])
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        if floor is not None:
            return cls(centroids, float(floor), False)
        return cls(centroids, loo_floor(vectors, y, sums), True)


def loo_floor(vectors: np.ndarray, y: np.ndarray, sums: np.ndarray) -> float:
    """The ``FLOOR_QUANTILE`` of each example's similarity to the centroid of its category's other
    examples (categories with one example give none); 0, no floor, when no category has two."""
    counts = np.bincount(y, minlength=len(sums))
    keep = counts[y] > 1
    if not keep.any():
        return 0.0
    others = sums[y[keep]] - vectors[keep]
    others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
    sims = np.einsum("ij,ij->i", others, vectors[keep])
    return float(np.quantile(sims, FLOOR_QUANTILE))


def fingerprint(*parts: Any, texts: Sequence[str] = ()) -> str:
    """A stable key for everything a fit depends on (settings, encoder, the texts and their order)."""
    digest = hashlib.sha256()
    for part in (*parts, *texts):
        digest.update(repr(part).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class FitCache:
    """Fitted routers' parts by fingerprint, in this process: a registry reloaded, or a second router
    on the same examples (the server's strategies, tests), neither encodes the examples nor refits."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get_or_fit(self, key: str, fit: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = fit()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.pop(next(iter(self._items)))
        return value


FITS = FitCache()
