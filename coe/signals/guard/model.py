"""The trained guard: a calibrated logistic regression over ``coe.signals.guard.features``, stored as
one no-pickle ``.npz`` (coe/data/npz.py) whose header names the encoder that made its vectors.

Why the header insists on the encoder: the weights are meaningless in another embedding space, so a
guard trained with one encoder (``Embedder.space``, e.g. ``all-MiniLM-L6-v2+int8``) refuses to run
with another and names both, instead of scoring nonsense.

Why the training vectors are in the file too: the regression is linear in the embedding, and a
role-play jailbreak or an injected email can sit close to a few training attacks without being on
the attack side of one hyperplane. The file keeps the training rows' labels and two of their
blocks (``NEIGHBOUR_BLOCKS``: the whole text, and the max over windows, where one odd line shows);
per block and label, the highest and the mean of the ``neighbours`` highest cosines of a text to
them are more inputs of the regression (two matrix-vector products per request). In training, a
row's own group is left out of its neighbours, so the regression learns how much an unseen text's
neighbours are worth, not a row's similarity to itself.

Scores: the regression gives p(benign | jailbreak | injection); the attack score is 1 - p(benign),
mapped through a Platt sigmoid fitted on a calibration slice of the training data (never on the
validation split). The calibration slice's benign scores are stored sorted, so a registry can ask for
another ``target_fpr`` without retraining: the threshold is their (1 - target_fpr) quantile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from coe.data.npz import read_npz, write_npz

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder

FORMAT = "coe-guard"
FORMAT_VERSION = 2
LABELS = ["benign", "jailbreak", "injection"]
NEIGHBOURS = 5  # per label: the highest cosine and the mean of this many highest


class GuardHeader(BaseModel):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    encoder: str = Field(description="embedding space of the vectors (Embedder.space)")
    backend: str
    labels: list[str] = Field(default_factory=lambda: list(LABELS))
    dense_dim: int = Field(description="width of coe.signals.guard.features.dense's vectors")
    neighbours: int = Field(NEIGHBOURS, ge=1, description="top cosines averaged per label")
    neighbour_blocks: list[str] = Field(description="dense blocks compared with the training rows'")
    platt: tuple[float, float] = Field(description="(a, b): p = sigmoid(a * logit(raw) + b)")
    target_fpr: float
    threshold: float = Field(description="threshold for target_fpr on the calibration slice")
    train_size: int
    calibration_size: int
    train_sha256: str
    split: str = Field(description="how the training rows were chosen (the documented split rule)")
    c: float = Field(description="inverse L2 strength of the regression")
    created_with: str = ""


@dataclass
class GuardScores:
    attack: np.ndarray  # (n,) calibrated attack probability
    probs: np.ndarray  # (n, 3) the regression's p(label)

    def label(self, i: int) -> str:
        return LABELS[1 + int(self.probs[i, 1:].argmax())]


class GuardModel:
    def __init__(self, header: GuardHeader, arrays: dict[str, np.ndarray]) -> None:
        from coe.encoding.char_tfidf import CharNgramTfidf
        from coe.signals.guard.features import TFIDF_CHARS

        self.header = header
        self.mean = arrays["mean"]
        self.scale = arrays["scale"]
        self.coef_dense = arrays["coef_dense"]
        self.coef_tfidf = arrays["coef_tfidf"]
        self.intercept = arrays["intercept"]
        self.calibration_benign = arrays["calibration_benign"]
        self.neighbour_vectors = arrays["neighbour_vectors"]
        self.neighbour_labels = arrays["neighbour_labels"]
        self.tfidf = CharNgramTfidf.from_arrays(arrays, TFIDF_CHARS)

    def threshold_for(self, target_fpr: float) -> float:
        """The calibrated score that flags about ``target_fpr`` of the calibration slice's benign texts."""
        import numpy as np

        scores = self.calibration_benign
        if scores.size == 0:
            return self.header.threshold
        return float(np.quantile(scores, 1 - target_fpr, method="higher"))

    def check_encoder(self, embedder: Embedder, path: Path) -> None:
        if embedder.space != self.header.encoder:
            raise ValueError(
                f"{path}: guard trained with encoder {self.header.encoder!r}, but the registry's encoder "
                f"is {embedder.space!r}; retrain it with `coe train-guard` or use that encoder"
            )

    def near(self, features: np.ndarray) -> np.ndarray:
        """The neighbour inputs of ``dense`` vectors: per block of ``neighbour_blocks``, per label."""
        import numpy as np

        from coe.signals.guard.features import unit_block

        labels, k = self.neighbour_labels, self.header.neighbours
        blocks = zip(self.header.neighbour_blocks, self.neighbour_vectors, strict=True)
        return np.hstack([neighbour_features(r, labels, unit_block(features, name), k) for name, r in blocks])

    def logits(self, features: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        full = np.hstack([features, self.near(features)])
        z = ((full - self.mean) / self.scale) @ self.coef_dense + self.intercept
        for i, text in enumerate(texts):
            cols, vals = self.tfidf.transform_one(text)
            if cols:
                z[i] += np.asarray(vals, dtype=np.float32) @ self.coef_tfidf[cols]
        return np.asarray(z, dtype=np.float64)

    def score(self, texts: Sequence[str], embedder: Embedder) -> GuardScores:
        from coe.signals.guard.features import dense

        features = dense(texts, embedder)
        return self.score_features(features, texts)

    def score_features(self, features: np.ndarray, texts: Sequence[str]) -> GuardScores:
        import numpy as np

        z = self.logits(features, texts)
        z = z - z.max(axis=1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        return GuardScores(calibrate(1 - probs[:, 0], self.header.platt), probs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "scale": self.scale,
            "coef_dense": self.coef_dense,
            "coef_tfidf": self.coef_tfidf,
            "intercept": self.intercept,
            "calibration_benign": self.calibration_benign,
            "neighbour_vectors": self.neighbour_vectors,
            "neighbour_labels": self.neighbour_labels,
            **self.tfidf.arrays(),
        }


def neighbour_features(
    refs: np.ndarray,
    ref_labels: np.ndarray,
    vectors: np.ndarray,
    k: int = NEIGHBOURS,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """(len(vectors), 2 * len(LABELS)) float32: per label, the highest cosine of each vector to the
    ``refs`` of that label and the mean of its ``k`` highest (unit vectors, so a dot product). ``exclude``
    (len(vectors), len(refs)) bool masks pairs out (a training row's own group); a label with no
    reference left scores -1."""
    import numpy as np

    sims = vectors @ refs.T
    if exclude is not None:
        sims = np.where(exclude, -1.0, sims)
    out = np.full((len(vectors), 2 * len(LABELS)), -1.0, dtype=np.float32)
    for label in range(len(LABELS)):
        cols = sims[:, ref_labels == label]
        if cols.shape[1] == 0:
            continue
        top = -np.partition(-cols, min(k, cols.shape[1]) - 1, axis=1)[:, : min(k, cols.shape[1])]
        out[:, 2 * label] = top.max(axis=1)
        out[:, 2 * label + 1] = top.mean(axis=1)
    return out


def calibrate(raw: np.ndarray, platt: tuple[float, float]) -> np.ndarray:
    import numpy as np

    p = np.clip(raw, 1e-6, 1 - 1e-6)
    z = platt[0] * np.log(p / (1 - p)) + platt[1]
    return np.asarray(1 / (1 + np.exp(-z)), dtype=np.float64)


def save(path: Path, model: GuardModel) -> None:
    write_npz(path, model.header.model_dump_json(), model.arrays())


def load(path: Path) -> GuardModel:
    """The guard at ``path``; ValueError naming the file when it is not one (or a damaged one)."""
    from pydantic import ValidationError

    raw, arrays = read_npz(path, "guard artefact")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a guard artefact (format {raw.get('format') if isinstance(raw, dict) else raw!r})"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: guard format version {raw.get('format_version')}, this coe reads {FORMAT_VERSION}; "
            "retrain it with `coe train-guard`"
        )
    try:
        header = GuardHeader.model_validate(raw)
        return GuardModel(header, arrays)
    except ValidationError as exc:
        raise ValueError(f"{path}: damaged guard header ({exc.error_count()} problems)") from None
    except KeyError as exc:
        raise ValueError(f"{path}: damaged guard artefact (missing {exc})") from None


def describe(model: GuardModel) -> dict[str, Any]:
    h = model.header
    return {
        "encoder": h.encoder,
        "threshold": h.threshold,
        "target_fpr": h.target_fpr,
        "train_size": h.train_size,
    }
