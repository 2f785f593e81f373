"""Fitting the cache's pair verifier so that its threshold holds on pairs it never saw.

Why grouped cross-validation: paraphrase data reuse sentences ("A man plays a flute." in five pairs),
so a verifier scored on a pair whose sentences it was fitted on looks better than it will on a
user's new wording; a threshold chosen on such scores replays wrong answers more often than it
promised. Here pairs are grouped by the sentences they share (connected components: two pairs with a
common sentence, even through a third pair, are one group), every group sits in one fold, each pair
is scored by the model fitted without its fold, and the threshold is the lowest at which those
out-of-fold scores reach the target precision. Its out-of-fold precision, with a 95% Wilson interval,
and recall are recorded in the verifier file.

Choosing the threshold on the out-of-fold scores and reporting their precision at it still flatters
a little (the threshold is the one that happened to reach the target), so the file also records a
nested estimate: each fold scored at the threshold chosen without it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from coe.signals.cache.matcher import Verifier

FOLDS = 5
MIN_HITS = 10  # a threshold needs this many out-of-fold hits: precision over fewer says little
LOW_RECALL = 0.05  # below it the file and `coe eval cache` say that the target costs nearly every hit
_Z95 = 1.959964


def fold_key(text: str) -> str:
    return " ".join(text.lower().split())


def sentence_groups(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Each pair's group: its component of sentences linked by pairs, named by the component's first
    sentence in sorted order (case and whitespace folded), so the name depends on the data only."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b, strict=True):
        rx, ry = root(fold_key(x)), root(fold_key(y))
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    first: dict[str, str] = {}
    for s in parent:
        r = root(s)
        first[r] = min(first.get(r, s), s)
    return [first[root(fold_key(x))] for x in a]


def bucket(group: str, salt: str, n: int) -> int:
    """A group's deterministic bucket in ``range(n)``, from its name and a salt."""
    return int(hashlib.sha1(f"coe-cache:{salt}:{group}".encode()).hexdigest()[:8], 16) % n


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: unlike the normal one it stays inside [0, 1] and
    does not collapse to a point when every hit was right."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denom
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denom
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def logistic(x: np.ndarray, y: np.ndarray, steps: int = 4000) -> Verifier:
    """Logistic regression (plain gradient descent, L2 1e-3) on standardised features; the threshold
    and provenance are filled in by the caller."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    w = np.zeros(z.shape[1])
    b = 0.0
    y = y.astype(np.float64)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) / len(y) + 1e-3 * w)
        b -= 0.5 * float(np.mean(p - y))
    return Verifier(w, b, mean, scale, 1.0, "", {})


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, allowed: np.ndarray, folds: np.ndarray, among: np.ndarray
) -> np.ndarray:
    """Each pair of ``among`` scored by a verifier fitted on the allowed pairs of ``among`` outside
    its fold; NaN where that side has one class only (too little data) or the pair is not in ``among``."""
    scores = np.full(len(labels), np.nan)
    for f in np.unique(folds[among]):
        fit = among & allowed & (folds != f)
        if len(np.unique(labels[fit])) < 2:
            continue
        model = logistic(features[fit], labels[fit])
        mine = among & (folds == f)
        scores[mine] = model.probability(features[mine])
    return scores


def choose_threshold(scores: np.ndarray, eligible: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The lowest score at which the pairs scoring at least it reach ``target`` precision (at least
    ``MIN_HITS`` of them); 1.0, no semantic hit, when none does."""
    ok = eligible & ~np.isnan(scores)
    s, y = scores[ok], labels[ok]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    correct = np.cumsum(y)
    for i in range(len(s) - 1, MIN_HITS - 2, -1):
        if i + 1 < len(s) and s[i + 1] == s[i]:
            continue  # a cut between equal scores is not a threshold
        if correct[i] / (i + 1) >= target:
            return float(s[i])
    return 1.0


@dataclass
class OperatingPoint:
    """Precision with its interval, recall and the wrong hits of a set of hits."""

    hits: int
    wrong_hits: int
    precision: float | None  # None without a hit
    precision_ci95: list[float]
    recall: float

    @classmethod
    def of(cls, hits: np.ndarray, labels: np.ndarray) -> OperatingPoint:
        n, right = int(hits.sum()), int((hits & (labels == 1)).sum())
        return cls(
            hits=n,
            wrong_hits=n - right,
            precision=round(right / n, 4) if n else None,
            precision_ci95=list(wilson(right, n)),
            recall=round(right / max(int((labels == 1).sum()), 1), 4),
        )


def fit_verifier(
    features: np.ndarray,
    labels: np.ndarray,
    allowed: np.ndarray,
    eligible: np.ndarray,
    groups: Sequence[str],
    target_precision: float,
    folds: int = FOLDS,
) -> Verifier:
    """The verifier fitted on every allowed pair (the guard lets it through), with the threshold and
    the numbers of its grouped cross-validation. ``eligible``: allowed and above the cosine floor, the
    pairs a threshold can make hits of. The caller fills in ``encoder`` and ``trained_on``."""
    fold = np.array([bucket(g, "fold", folds) for g in groups])
    everyone = np.ones(len(labels), dtype=bool)
    scores = out_of_fold(features, labels, allowed, fold, everyone)
    threshold = choose_threshold(scores, eligible, labels, target_precision)
    point = OperatingPoint.of(eligible & (scores >= threshold), labels)
    model = logistic(features[allowed], labels[allowed])  # the caller checked that some pair is allowed
    model.threshold = threshold
    model.out_of_fold = {
        "folds": folds,
        "groups": len(set(groups)),
        "pairs": len(labels),
        "paraphrases": int((labels == 1).sum()),
        "target_precision": target_precision,
        "threshold": threshold,
        "reached": threshold < 1.0,
        **asdict(point),
        "nested": _nested(features, labels, allowed, eligible, fold, target_precision),
    }
    if threshold < 1.0 and point.recall < LOW_RECALL:
        model.out_of_fold["note"] = f"the target precision needs a recall under {LOW_RECALL}"
    return model


def _nested(
    features: np.ndarray,
    labels: np.ndarray,
    allowed: np.ndarray,
    eligible: np.ndarray,
    fold: np.ndarray,
    target: float,
) -> dict[str, object]:
    """Each fold scored by the verifier fitted on the others, at the threshold their own inner
    out-of-fold scores chose: what choosing a threshold this way gives on pairs it never saw."""
    hits = np.zeros(len(labels), dtype=bool)
    thresholds = []
    for f in np.unique(fold):
        inner = fold != f
        inner_scores = out_of_fold(features, labels, allowed, fold, inner)
        t = choose_threshold(inner_scores, eligible & inner, labels, target)
        fit = inner & allowed
        if t >= 1.0 or len(np.unique(labels[fit])) < 2:
            continue
        mine = fold == f
        p = logistic(features[fit], labels[fit]).probability(features[mine])
        hits[np.flatnonzero(mine)[eligible[mine] & (p >= t)]] = True
        thresholds.append(round(t, 4))
    return {**asdict(OperatingPoint.of(hits, labels)), "thresholds": thresholds}
