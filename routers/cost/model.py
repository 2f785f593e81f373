"""Predict each expert's quality and cost for a prompt from its nearest labelled neighbours.

This is the model behind the cost-aware router (``routers.cost.router``) and the offline curves of
``coe eval outcomes``. Two configurations matter:

* RouterBench's kNN router (Hu et al., 2024): the k nearest training prompts by cosine, each weighing
  the same; predicted quality = their mean outcome; cost = the expert's mean cost. ``baseline()``.
* Ours adds what a noisy 0/1 outcome table needs: neighbours weigh ``exp((cos - 1) / T)``, so far
  neighbours count less, and the estimate is shrunk toward a prior with ``shrink`` pseudo-neighbours:
  ``q̂ = (Σ w_i q_i + shrink * prior) / (Σ w_i + shrink)``. The prior is the quality of each expert
  on the tasks the neighbours come from (task means over the whole training table, weighted by the
  neighbours' task votes), so a prompt far from everything falls back on "how good is this expert
  at this kind of task" rather than on a handful of coin flips. Cost is either the expert's mean
  cost or the neighbours' weighted mean cost (RouterBench's per-query cost grows with the prompt's
  length); tuning picks one (``routers.cost.training``).

Only numpy and faiss (at search time) are needed; the state is plain arrays, saved without pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from coe.data.npz import read_npz, write_npz
from coe.data.splits import rows_sha256
from coe.encoding.search import ExactSearch

FORMAT = "coe-cost-router"
FORMAT_VERSION = 1

CostMode = Literal["mean", "knn"]


class KNNParams(BaseModel):
    k: int = Field(10, ge=1, description="neighbours per prompt")
    temperature: float | None = Field(
        None, gt=0, description="neighbour weight exp((cos - 1) / T); None: every neighbour weighs 1"
    )
    shrink: float = Field(0.0, ge=0, description="pseudo-neighbours at the task prior")
    cost: CostMode = Field("mean", description="mean: expert's mean cost; knn: neighbours' cost")


class CostModelHeader(BaseModel):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    encoder: str = Field(description="embedder.model the vectors came from")
    space: str = Field(description="embedding space (encoders of one space share vectors)")
    max_chars: int | None = Field(None, description="the text view the vectors were made from")
    models: list[str] = Field(description="columns of quality and cost: the experts of the table")
    tasks: list[str]
    cost_unit: str
    params: KNNParams
    recommended_lam: float | None = Field(
        None, description="λ reaching the best single expert's quality on validation at the least cost"
    )
    train_size: int
    train_sha256: str
    sources: list[str] = Field(default_factory=list)


@dataclass
class Prediction:
    quality: np.ndarray  # n x m
    cost: np.ndarray  # n x m
    neighbours: np.ndarray  # n x k training rows
    similarities: np.ndarray  # n x k cosines
    task_probs: np.ndarray  # n x tasks


@dataclass
class KNNQualityModel:
    vectors: np.ndarray  # n x d, unit norm
    quality: np.ndarray  # n x m in [0, 1]
    cost: np.ndarray  # n x m
    task: np.ndarray  # n, index into tasks
    tasks: list[str]
    models: list[str]
    params: KNNParams = field(default_factory=KNNParams)
    _exact: ExactSearch | None = None  # shared by with_params clones

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.quality = np.asarray(self.quality, dtype=np.float32)
        self.cost = np.asarray(self.cost, dtype=np.float32)
        self.task = np.asarray(self.task, dtype=np.int64)
        counts = np.bincount(self.task, minlength=len(self.tasks)).astype(np.float64)
        sums = np.zeros((len(self.tasks), len(self.models)))
        np.add.at(sums, self.task, self.quality)
        glob = self.quality.mean(axis=0)
        # A task seen only a few times leans on the global mean (one pseudo-count of 5 prompts).
        self.task_quality = (sums + 5 * glob) / (counts[:, None] + 5)
        self.mean_cost = self.cost.mean(axis=0)
        if self._exact is None:
            self._exact = ExactSearch(self.vectors)

    def with_params(self, params: KNNParams) -> KNNQualityModel:
        """The same training data under other settings (shares the search index)."""
        return KNNQualityModel(
            self.vectors, self.quality, self.cost, self.task, self.tasks, self.models, params, self._exact
        )

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._exact is not None  # set in __post_init__
        return self._exact.search(vectors, max(1, min(k, len(self.vectors))))

    def predict(self, vectors: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None = None) -> Prediction:
        """``found`` passes a precomputed (similarities, indices) search with at least k columns."""
        p = self.params
        sims, idx = found if found is not None else self.search(vectors, p.k)
        sims, idx = sims[:, : p.k].astype(np.float64), idx[:, : p.k]
        if p.temperature is None:
            w = np.ones_like(sims)
        else:
            w = np.exp((np.minimum(sims, 1.0) - 1.0) / p.temperature)
        wsum = w.sum(axis=1, keepdims=True)
        task_probs = np.zeros((len(sims), len(self.tasks)))
        rows = np.repeat(np.arange(len(sims)), sims.shape[1])
        np.add.at(task_probs, (rows, self.task[idx].ravel()), w.ravel())
        task_probs /= np.maximum(task_probs.sum(axis=1, keepdims=True), 1e-300)
        local = np.einsum("nk,nkm->nm", w, self.quality[idx])
        prior = task_probs @ self.task_quality
        quality = (local + p.shrink * prior) / (wsum + p.shrink)
        if p.cost == "knn":
            cost = np.einsum("nk,nkm->nm", w, self.cost[idx]) / wsum
        else:
            cost = np.tile(self.mean_cost, (len(sims), 1)).astype(np.float64)
        return Prediction(quality, cost, idx, sims, task_probs)

    # ------------------------------------------------------------------------------ artefact

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors, "quality": self.quality, "cost": self.cost, "task": self.task}


def baseline(model: KNNQualityModel, k: int = 10) -> KNNQualityModel:
    """RouterBench's kNN router: k uniform neighbours, mean outcome, the expert's mean cost."""
    return model.with_params(KNNParams(k=k, temperature=None, shrink=0.0, cost="mean"))


def table_hash(prompts: Sequence[str], quality: np.ndarray, cost: np.ndarray) -> str:
    rows = zip(prompts, quality.tolist(), cost.tolist(), strict=True)
    return rows_sha256([text, q, c] for text, q, c in rows)


def save(path: Path, header: CostModelHeader, model: KNNQualityModel) -> None:
    write_npz(path, header.model_dump_json(), model.arrays())


def load(path: Path) -> tuple[CostModelHeader, KNNQualityModel]:
    """Read an artefact; ValueError names the file and what is wrong with it."""
    raw, arrays = read_npz(path, "cost-router artefact")
    try:
        header = CostModelHeader.model_validate(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: not a cost-router artefact (bad header: {exc})") from exc
    if header.format != FORMAT:
        raise ValueError(f"{path}: a {header.format!r} artefact, not a cost-router artefact ({FORMAT!r})")
    if header.format_version != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {header.format_version}, expected {FORMAT_VERSION}")
    missing = [k for k in ("vectors", "quality", "cost", "task") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {', '.join(missing)}")
    model = KNNQualityModel(
        arrays["vectors"],
        arrays["quality"],
        arrays["cost"],
        arrays["task"],
        header.tasks,
        header.models,
        header.params,
    )
    return header, model
