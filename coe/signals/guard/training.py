"""``coe train-guard``: the guard's data, its split rule and its training. Offline only: the runtime
never imports this module (tests/unit/test_layering.py).

Split rule (documented in docs/signals.md, reproducible from the data alone): rows are grouped, so
near-copies never straddle the line: BIPIA rows by their id without the ``-start`` / ``-end`` suffix
(an email and its two injected copies), every other row by its first 400 characters, lower-cased with
runs of non-word characters collapsed. Within each ``source``, groups are ordered by
``sha1("coe-guard:<seed>:validation:<group>")`` and the first 20% of them (rounded; at least one where
a source has five groups or more) are the validation split. Stratified by source, hence by label.

Calibration never sees the validation split: the training rows are cut into ``FOLDS`` folds by
``int(sha1("coe-guard:<seed>:fold:<group>")) % FOLDS``; each fold is scored by a model fitted on the
other four, and these out-of-fold scores (every training row once, by a model that never saw its
group) are the calibration slice: the Platt sigmoid is fitted on them and the threshold is the
``1 - target_fpr`` quantile of their benign scores. The shipped model is then fitted on all training
rows. Out-of-fold rather than one held-back slice because a 2% rate read off ~130 benign rows moved
the threshold by more than the model's own errors did.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from coe.errors import CoEError
from coe.signals.guard.model import LABELS

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder
    from coe.signals.guard.model import GuardModel

SEED = 22
VALIDATION_SHARE = 0.2
FOLDS = 5


class GuardDataError(CoEError):
    """A guard data file has bad lines (each named file:line: why)."""


@dataclass(frozen=True)
class GuardRow:
    id: str
    text: str
    label: str
    source: str


class TrainSettings(BaseModel):
    target_fpr: float = Field(0.02, gt=0, lt=1, description="false-positive rate the threshold is set for")
    c: float = Field(0.1, gt=0, description="inverse L2 strength of the logistic regression")
    seed: int = SEED
    validation_share: float = Field(VALIDATION_SHARE, ge=0, lt=1)
    folds: int = Field(FOLDS, ge=2, description="folds of the out-of-fold calibration scores")


def read_guard_data(path: Path) -> list[GuardRow]:
    """Every row of a guard JSONL file (``text``, ``label`` in benign|jailbreak|injection, optional ``id``
    and ``source``); one error listing every bad line."""
    from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8

    if not path.is_file():
        raise GuardDataError(f"{path}: no such file")
    problems: list[str] = []
    rows: list[GuardRow] = []
    for n, row in jsonl_rows(path, read_utf8(path, GuardDataError), problems):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{path}:{n}: `text` must be a non-empty string")
        elif label not in LABELS:
            problems.append(f"{path}:{n}: `label` must be one of {', '.join(LABELS)}, got {label!r}")
        else:
            rows.append(GuardRow(str(row.get("id", n)), text, str(label), str(row.get("source", path.stem))))
    raise_problems(problems, GuardDataError)
    if not rows:
        raise GuardDataError(f"{path}: no rows")
    return rows


def group_of(row: GuardRow) -> str:
    if row.source.startswith("bipia/"):
        return re.sub(r"-(start|end)$", "", row.id)
    return re.sub(r"\W+", " ", row.text.lower()).strip()[:400]


def split(rows: Sequence[GuardRow], share: float, purpose: str, seed: int = SEED) -> list[bool]:
    """True for the rows on the held-out side of ``purpose`` (see the module docstring)."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        group = group_of(row)
        if group not in by_source[row.source]:
            by_source[row.source].append(group)
    chosen: set[tuple[str, str]] = set()
    for source, groups in by_source.items():
        ordered = sorted(
            groups, key=lambda g: hashlib.sha1(f"coe-guard:{seed}:{purpose}:{g}".encode()).hexdigest()
        )
        k = round(share * len(ordered))
        if k == 0 and share > 0 and len(ordered) >= 5:
            k = 1
        chosen |= {(source, g) for g in ordered[:k]}
    return [(row.source, group_of(row)) in chosen for row in rows]


def validation_split(
    rows: Sequence[GuardRow], settings: TrainSettings
) -> tuple[list[GuardRow], list[GuardRow]]:
    held = split(rows, settings.validation_share, "validation", settings.seed)
    return [r for r, h in zip(rows, held, strict=True) if not h], [
        r for r, h in zip(rows, held, strict=True) if h
    ]


def folds_of(rows: Sequence[GuardRow], folds: int, seed: int = SEED) -> list[int]:
    return [
        int(hashlib.sha1(f"coe-guard:{seed}:fold:{group_of(r)}".encode()).hexdigest(), 16) % folds
        for r in rows
    ]


def train(
    rows: Sequence[GuardRow],
    embedder: Embedder,
    settings: TrainSettings,
    split_note: str,
    features: np.ndarray | None = None,
) -> GuardModel:
    """Fit on all ``rows``; calibrate and pick the threshold on out-of-fold scores of the same rows."""
    import numpy as np

    from coe.data.splits import dataset_hash
    from coe.signals.guard.features import dense

    texts = [r.text for r in rows]
    x = features if features is not None else dense(texts, embedder)
    y = np.array([LABELS.index(r.label) for r in rows])
    groups = np.unique([group_of(r) for r in rows], return_inverse=True)[1]
    fold = np.array(folds_of(rows, settings.folds, settings.seed))
    oof = np.zeros(len(rows))
    for k in range(settings.folds):
        inside, outside = fold != k, fold == k
        if not outside.any() or len(set(y[inside])) < len(LABELS):
            continue
        inside_texts = [t for t, f in zip(texts, inside, strict=True) if f]
        member = fit(x[inside], inside_texts, y[inside], settings, groups[inside])
        held = [t for t, f in zip(texts, outside, strict=True) if f]
        oof[outside] = 1 - member.score_features(x[outside], held).probs[:, 0]
    model = fit(x, texts, y, settings, groups)
    model.header.train_size = len(rows)
    model.header.calibration_size = len(rows)
    model.header.train_sha256 = dataset_hash(texts, [r.label for r in rows])
    model.header.encoder = embedder.space
    model.header.backend = embedder.backend
    model.header.split = split_note
    calibrate_on(model, oof, y, settings.target_fpr)
    return model


def fit(
    x: np.ndarray, texts: Sequence[str], y: np.ndarray, settings: TrainSettings, groups: np.ndarray
) -> GuardModel:
    """The regression on ``x`` (``dense`` vectors), the TF-IDF of ``texts`` and each row's neighbour
    cosines (``NEIGHBOUR_BLOCKS``) to the other rows outside its group (``groups``: one id per row,
    as ``group_of``), so the neighbours of a training row look like those of an unseen text."""
    import numpy as np
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression

    from coe import __version__
    from coe.encoding.char_tfidf import CharNgramTfidf
    from coe.signals.guard.features import NEIGHBOUR_BLOCKS, TFIDF_CHARS, unit_block
    from coe.signals.guard.model import NEIGHBOURS, GuardHeader, GuardModel

    d = x.shape[1]
    refs = np.stack([unit_block(x, name) for name in NEIGHBOUR_BLOCKS])  # (blocks, rows, dim)
    ref_labels = y.astype(np.int8)
    near = [_own_group_left_out(r, ref_labels, groups) for r in refs]
    full = np.hstack([x, *near])
    mean = full.mean(axis=0)
    scale = full.std(axis=0) + 1e-6
    tfidf = CharNgramTfidf.fit(texts, max_features=50_000, min_df=2, max_chars=TFIDF_CHARS)
    design = hstack([csr_matrix((full - mean) / scale), tfidf.transform(texts)]).tocsr()
    lr = LogisticRegression(C=settings.c, max_iter=3000, class_weight="balanced")
    lr.fit(design, y)
    coef = lr.coef_.T.astype(np.float32)  # (features, classes)
    width = full.shape[1]
    header = GuardHeader(
        encoder="",
        backend="",
        dense_dim=d,
        neighbours=NEIGHBOURS,
        neighbour_blocks=list(NEIGHBOUR_BLOCKS),
        platt=(1.0, 0.0),
        target_fpr=settings.target_fpr,
        threshold=0.5,
        train_size=len(texts),
        calibration_size=0,
        train_sha256="",
        split="",
        c=settings.c,
        created_with=__version__,
    )
    arrays = {
        "mean": mean.astype(np.float32),
        "scale": scale.astype(np.float32),
        "coef_dense": np.ascontiguousarray(coef[:width]),
        "coef_tfidf": np.ascontiguousarray(coef[width:]),
        "intercept": lr.intercept_.astype(np.float32),
        "calibration_benign": np.zeros(0, dtype=np.float32),
        "neighbour_vectors": refs,
        "neighbour_labels": ref_labels,
        **tfidf.arrays(),
    }
    return GuardModel(header, arrays)


def _own_group_left_out(refs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``neighbour_features`` of every training row against the others outside its group, a block of
    rows at a time: the whole row-by-row similarity matrix of a large file would not fit in memory."""
    import numpy as np

    from coe.signals.guard.model import NEIGHBOURS, neighbour_features

    step = 2048
    return np.vstack(
        [
            neighbour_features(
                refs, labels, refs[i : i + step], NEIGHBOURS, groups[i : i + step, None] == groups[None, :]
            )
            for i in range(0, len(refs), step)
        ]
    )


def calibrate_on(model: GuardModel, raw: np.ndarray, y: np.ndarray, target_fpr: float) -> None:
    """Platt scaling of the out-of-fold attack scores, then the threshold for ``target_fpr``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from coe.signals.guard.model import calibrate

    p = np.clip(raw, 1e-6, 1 - 1e-6)
    z = np.log(p / (1 - p)).reshape(-1, 1)
    attack = (y != 0).astype(int)
    platt = LogisticRegression(C=100.0).fit(z, attack)
    model.header.platt = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    calibrated = calibrate(raw, model.header.platt)
    model.calibration_benign = np.sort(calibrated[attack == 0]).astype(np.float32)
    model.header.target_fpr = target_fpr
    model.header.threshold = model.threshold_for(target_fpr)
