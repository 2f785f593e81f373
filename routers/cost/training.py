"""Fit and tune the kNN quality model behind the cost router on an outcome table.

Tuning picks the settings (neighbours, weighting, shrinkage, cost model) with the largest AIQ on a
validation part of the *training* table (a deterministic split keyed on the prompt text, so the
same prompt never sits on both sides); test data is never looked at. The RouterBench baseline gets
the same treatment over its own grid (k in 5, 10, 40, as in RouterBench's configuration), so the
comparison is between two tuned routers, not a tuned one and a default one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from coe.evaluation import curves
from routers.cost.model import CostModelHeader, KNNParams, KNNQualityModel, baseline, save, table_hash

if TYPE_CHECKING:
    from coe.evaluation.outcomes import OutcomeTable

VALIDATION_FRACTION = 0.2
VALIDATION_SALT = "coe-validation"
BASELINE_KS = (5, 10, 40)


def default_grid() -> list[KNNParams]:
    ks = (10, 25, 50, 100, 200)
    temperatures = (None, 0.02, 0.05, 0.1)
    shrinks = (0.0, 1.0, 3.0, 10.0, 30.0)
    costs = ("mean", "knn")
    return [
        KNNParams(k=k, temperature=t, shrink=s, cost=c)
        for k, t, s, c in itertools.product(ks, temperatures, shrinks, costs)
    ]


class Trial(BaseModel):
    params: KNNParams
    aiq: float


class TuneReport(BaseModel):
    best: KNNParams
    best_aiq: float = Field(description="AIQ on the validation part")
    baseline_k: int
    baseline_aiq: float
    recommended_lam: float | None = Field(
        None, description="cheapest λ reaching the best single expert's validation quality, if any"
    )
    train_size: int
    validation_size: int
    trials: list[Trial] = Field(default_factory=list)


def fit(table: OutcomeTable, vectors: np.ndarray, params: KNNParams | None = None) -> KNNQualityModel:
    tasks = sorted(set(table.tasks))
    index = {t: i for i, t in enumerate(tasks)}
    return KNNQualityModel(
        vectors,
        table.quality,
        table.cost,
        np.array([index[t] for t in table.tasks]),
        tasks,
        list(table.models),
        params or KNNParams(),
    )


def curve(
    model: KNNQualityModel, table: OutcomeTable, found: tuple[np.ndarray, np.ndarray]
) -> list[curves.SweepPoint]:
    pred = model.predict(np.empty((0, 0)), found)
    return curves.sweep(pred.quality, pred.cost, table.quality, table.cost)


def _best(
    model: KNNQualityModel,
    table: OutcomeTable,
    found: tuple[np.ndarray, np.ndarray],
    grid: Iterable[KNNParams],
) -> list[Trial]:
    singles = curves.single_experts(table)
    trials = [
        Trial(params=p, aiq=curves.aiq(curve(model.with_params(p), table, found), singles)) for p in grid
    ]
    return sorted(trials, key=lambda t: -t.aiq)


def validation_split(
    table: OutcomeTable, vectors: np.ndarray
) -> tuple[OutcomeTable, np.ndarray, OutcomeTable, np.ndarray]:
    """The part of ``table`` tuning fits on and the part it scores on, each with its rows of
    ``vectors``: anything compared with ``tune``'s choices must be tuned on exactly these."""
    rows = {p: i for i, p in enumerate(table.prompts)}
    fit_part, val_part = table.split(VALIDATION_FRACTION, salt=VALIDATION_SALT)
    if len(fit_part) == 0 or len(val_part) == 0:
        raise ValueError(f"too few prompts ({len(table)}) to hold some out for tuning")
    return (
        fit_part,
        vectors[[rows[p] for p in fit_part.prompts]],
        val_part,
        vectors[[rows[p] for p in val_part.prompts]],
    )


def tune(table: OutcomeTable, vectors: np.ndarray, grid: list[KNNParams] | None = None) -> TuneReport:
    """Pick our settings and the baseline's k on a validation split of ``table``."""
    grid = grid or default_grid()
    fit_part, fit_vectors, val_part, val_vectors = validation_split(table, vectors)
    model = fit(fit_part, fit_vectors)
    kmax = max(max(p.k for p in grid), *BASELINE_KS)
    found = model.search(val_vectors, kmax)
    trials = _best(model, val_part, found, grid)
    base = _best(model, val_part, found, [baseline(model, k).params for k in BASELINE_KS])
    best_points = curve(model.with_params(trials[0].params), val_part, found)
    reach = curves.cheapest_reaching(best_points, curves.best_single(val_part).quality)
    return TuneReport(
        best=trials[0].params,
        best_aiq=trials[0].aiq,
        baseline_k=base[0].params.k,
        baseline_aiq=base[0].aiq,
        recommended_lam=reach.knob if reach else None,
        train_size=len(fit_part),
        validation_size=len(val_part),
        trials=trials[:10],
    )


def write_artefact(
    out: Path,
    table: OutcomeTable,
    vectors: np.ndarray,
    params: KNNParams,
    encoder: str,
    space: str,
    max_chars: int | None,
    recommended_lam: float | None = None,
) -> CostModelHeader:
    model = fit(table, vectors, params)
    header = CostModelHeader(
        encoder=encoder,
        space=space,
        max_chars=max_chars,
        models=model.models,
        tasks=model.tasks,
        cost_unit=table.cost_unit,
        params=params,
        recommended_lam=recommended_lam,
        train_size=len(table),
        train_sha256=table_hash(table.prompts, table.quality, table.cost),
        sources=list(table.sources),
    )
    save(out, header, model)
    return header
