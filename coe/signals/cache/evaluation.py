"""``coe eval cache`` and ``coe train-cache``: the matcher on labelled sentence pairs.

A pair file is JSONL with ``a``, ``b`` and ``label`` (1: the same question, the answer may be
replayed; 0: not), optionally ``score`` (e.g. STS 0-5, reported per band) and ``id``. ``--split``
picks a deterministic share of the file's sentence groups (``validation``: 30%; pairs that share a
sentence are one group, ``fitting.sentence_groups``), so training and evaluation never see the same
sentence, whatever the file's order. Without ``--split`` every pair is scored: a file other than the
training file has nothing to hold out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
from coe.errors import CoEError
from coe.signals.cache.features import REFUSALS, feature_matrix, refusal
from coe.signals.cache.fitting import OperatingPoint, bucket, fit_verifier, sentence_groups
from coe.signals.cache.matcher import Matcher, Verifier

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
    groups: list[str] = field(default_factory=list)  # sentence groups, computed over the whole file


def in_validation(group: str) -> bool:
    return bucket(group, "validation", 100) < VALIDATION_PERCENT


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
        out.a.append(a)
        out.b.append(b)
        out.labels.append(int(label))
        out.scores.append(None if score is None else float(score))
    raise_problems(problems, PairsError)
    out.groups = sentence_groups(out.a, out.b)
    if split != "all":
        keep = [i for i, g in enumerate(out.groups) if in_validation(g) == (split == "validation")]
        out = Pairs(
            [out.a[i] for i in keep],
            [out.b[i] for i in keep],
            [out.labels[i] for i in keep],
            [out.scores[i] for i in keep],
            [out.groups[i] for i in keep],
        )
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


class Refused(BaseModel):
    pairs: int = Field(description="pairs the verifier accepted and the guard refused for this reason")
    paraphrases: int = Field(description="of them, pairs labelled as sharing an answer (hits lost)")


class CacheEval(BaseModel):
    n: int
    paraphrases: int
    hits: int
    wrong_hits: int = Field(description="hits on pairs that must not share an answer: wrong answers replayed")
    precision: float = Field(description="share of declared hits that are paraphrases")
    precision_ci95: list[float] = Field(description="95% Wilson interval of the precision")
    recall: float = Field(description="share of paraphrases declared hits")
    threshold: float | None = Field(description="the verifier probability a hit needs")
    min_cosine: float
    blocked_by_guard: int = Field(description="pairs the lexical guard refuses, whatever their cosine")
    refused: dict[str, Refused] = Field(description="per guard reason, the would-be hits it refused")
    by_score_band: dict[str, Band]
    encoder: str
    verifier: str | None
    recorded: dict[str, Any] | None = Field(
        description="the verifier file's own out-of-fold numbers (coe train-cache), to set beside these"
    )
    split: str


def evaluate(
    pairs: Pairs, cos: np.ndarray, matcher: Matcher, encoder: str, verifier: str | None, split: str = "all"
) -> CacheEval:
    verdicts = [matcher.decide(float(c), a, b) for c, a, b in zip(cos, pairs.a, pairs.b, strict=True)]
    hit = np.array([v.hit for v in verdicts])
    y = np.array(pairs.labels)
    blocked = sum(refusal(a, b) is not None for a, b in zip(pairs.a, pairs.b, strict=True))
    refused = {
        kind: Refused(
            pairs=sum(v.refused == kind for v in verdicts),
            paraphrases=sum(v.refused == kind and label == 1 for v, label in zip(verdicts, y, strict=True)),
        )
        for kind in REFUSALS
    }
    point = OperatingPoint.of(hit, y)
    return CacheEval(
        n=len(y),
        paraphrases=int(y.sum()),
        hits=point.hits,
        wrong_hits=point.wrong_hits,
        precision=point.precision or 0.0,
        precision_ci95=point.precision_ci95,
        recall=point.recall,
        threshold=matcher.threshold,
        min_cosine=matcher.min_cosine,
        blocked_by_guard=blocked,
        refused=refused,
        by_score_band=_bands(pairs.scores, y == 1, hit),
        encoder=encoder,
        verifier=verifier,
        recorded=matcher.verifier.out_of_fold if matcher.verifier is not None else None,
        split=split,
    )


def _bands(scores: list[float | None], y: np.ndarray, hit: np.ndarray) -> dict[str, Band]:
    bands: dict[str, Band] = {}
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
    return bands


def train(
    pairs: Pairs,
    cos: np.ndarray,
    encoder: str,
    target_precision: float,
    trained_on: dict[str, Any],
    min_cosine: float = 0.8,
) -> Verifier:
    """The verifier, its threshold chosen by grouped cross-validation (``fitting``) for the target
    precision of the whole matcher (cosine floor, verifier, guard) at ``min_cosine``."""
    features = feature_matrix(cos.tolist(), list(zip(pairs.a, pairs.b, strict=True)))
    allowed = np.array([refusal(a, b) is None for a, b in zip(pairs.a, pairs.b, strict=True)])
    if not allowed.any():
        raise PairsError("no pair passes the guard: nothing to fit a verifier on")
    labels = np.array(pairs.labels)
    eligible = allowed & (cos >= min_cosine)
    model = fit_verifier(features, labels, allowed, eligible, pairs.groups, target_precision)
    model.encoder = encoder
    model.trained_on = {
        **trained_on,
        "pairs": len(labels),
        "target_precision": target_precision,
        "min_cosine": min_cosine,
    }
    return model
