"""``coe eval cache`` and ``coe train-cache``: the matcher on labelled sentence pairs.

A pair file is JSONL with ``a``, ``b`` and ``label`` (1: the same question, the answer may be
replayed; 0: not), optionally ``score`` (e.g. STS 0-5, reported per band) and ``id``. ``--split``
picks a deterministic share by the pair's text (``validation``: 30%), so training and evaluation
never see the same pair, whatever the file's order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
from coe.errors import CoEError
from coe.signals.cache.features import feature_matrix, guard
from coe.signals.cache.matcher import Matcher, Verifier, fit_verifier

VALIDATION_PERCENT = 30
Split = Literal["train", "validation", "all"]
BANDS = ((0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.01))


class PairsError(CoEError):
    """A pair file that cannot be used; the message names each bad line."""


@dataclass
class Pairs:
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)


def in_validation(a: str, b: str) -> bool:
    key = " || ".join(sorted(" ".join(t.lower().split()) for t in (a, b)))
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100 < VALIDATION_PERCENT


def read_pairs(path: Path, split: Split = "all") -> Pairs:
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    problems: list[str] = []
    out = Pairs()
    for n, row in jsonl_rows(path, read_utf8(path, PairsError), problems):
        missing = [k for k in ("a", "b", "label") if k not in row]
        if missing:
            problems.append(f"{path}:{n}: missing field {', '.join(repr(m) for m in missing)}")
            continue
        a, b, label, score = row["a"], row["b"], row["label"], row.get("score")
        if not isinstance(a, str) or not a.strip() or not isinstance(b, str) or not b.strip():
            problems.append(f"{path}:{n}: 'a' and 'b' must be non-empty strings")
            continue
        if label not in (0, 1) or isinstance(label, bool):
            problems.append(f"{path}:{n}: 'label' must be 0 or 1, not {label!r}")
            continue
        if score is not None and (not isinstance(score, int | float) or isinstance(score, bool)):
            problems.append(f"{path}:{n}: 'score' must be a number")
            continue
        if split != "all" and in_validation(a, b) != (split == "validation"):
            continue
        out.a.append(a)
        out.b.append(b)
        out.labels.append(int(label))
        out.scores.append(None if score is None else float(score))
    raise_problems(problems, PairsError)
    if not out.labels:
        raise PairsError(f"{path}: no pairs in split {split!r}")
    return out


def cosines(pairs: Pairs, encode: Any) -> np.ndarray:
    """Each sentence encoded once (``encode``: texts -> unit vectors)."""
    texts = sorted(set(pairs.a) | set(pairs.b))
    vectors = encode(texts)
    index = {t: i for i, t in enumerate(texts)}
    va = vectors[[index[t] for t in pairs.a]]
    vb = vectors[[index[t] for t in pairs.b]]
    return np.asarray(np.sum(va * vb, axis=1), dtype=np.float64)


class Band(BaseModel):
    n: int
    paraphrases: int
    hits: int
    correct_hits: int


class CacheEval(BaseModel):
    n: int
    paraphrases: int
    hits: int
    precision: float = Field(description="share of declared hits that are paraphrases")
    recall: float = Field(description="share of paraphrases declared hits")
    threshold: float | None = Field(description="the verifier probability a hit needs")
    min_cosine: float
    blocked_by_guard: int = Field(description="pairs the lexical guard refused (numbers, dates, negation)")
    by_score_band: dict[str, Band]
    encoder: str
    verifier: str | None


def evaluate(
    pairs: Pairs, cos: np.ndarray, matcher: Matcher, encoder: str, verifier: str | None
) -> CacheEval:
    verdicts = [matcher.decide(float(c), a, b) for c, a, b in zip(cos, pairs.a, pairs.b, strict=True)]
    hit = np.array([v.hit for v in verdicts])
    y = np.array(pairs.labels) == 1
    blocked = sum(guard(a, b) is not None for a, b in zip(pairs.a, pairs.b, strict=True))
    bands: dict[str, Band] = {}
    scores = pairs.scores
    if any(s is not None for s in scores):
        for lo, hi in BANDS:
            m = np.array([s is not None and lo <= s < hi for s in scores])
            name = f"{lo:g}-{min(hi, 5.0):g}"
            bands[name] = Band(
                n=int(m.sum()),
                paraphrases=int((m & y).sum()),
                hits=int((m & hit).sum()),
                correct_hits=int((m & hit & y).sum()),
            )
    tp = int((hit & y).sum())
    return CacheEval(
        n=len(y),
        paraphrases=int(y.sum()),
        hits=int(hit.sum()),
        precision=round(tp / max(int(hit.sum()), 1), 4),
        recall=round(tp / max(int(y.sum()), 1), 4),
        threshold=matcher.threshold,
        min_cosine=matcher.min_cosine,
        blocked_by_guard=blocked,
        by_score_band=bands,
        encoder=encoder,
        verifier=verifier,
    )


def train(pairs: Pairs, cos: np.ndarray, encoder: str, target_precision: float, source: str) -> Verifier:
    features = feature_matrix(cos.tolist(), list(zip(pairs.a, pairs.b, strict=True)))
    allowed = np.array([guard(a, b) is None for a, b in zip(pairs.a, pairs.b, strict=True)])
    labels = np.array(pairs.labels)
    return fit_verifier(
        features,
        labels,
        allowed,
        encoder,
        target_precision,
        {"source": source, "pairs": len(labels), "target_precision": target_precision},
    )
