"""``coe eval outcomes``: our cost router against every baseline on an outcome table's test side.

Steps: embed train and test prompts (cached on disk), tune our kNN quality model and the RouterBench
kNN baseline on a validation part of the train side (``routers.cost.training.tune``), refit both on
the whole train side, sweep λ exactly on the test side, and summarise each curve (AIQ, APGR, the
cheapest point that reaches the best single expert). See ``coe.evaluation.curves`` for definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from coe.evaluation import curves
from coe.evaluation.curves import CostQuality, NamedPoint, SweepPoint
from coe.evaluation.outcomes import ROUTELLM_PRICE_PER_MTOK, ROUTERDC_PARAMS_B

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable

COST_NOTES = {
    "usd_per_query": "USD per query as recorded in the table (prompt and completion tokens at list price)",
    "params_b": "parameter count of the chosen model in billions: "
    + ", ".join(f"{m} {b}" for m, b in ROUTERDC_PARAMS_B.items()),
    "usd_per_mtok": "list price in USD per million tokens (RouteLLM paper): "
    + ", ".join(f"{m} {p}" for m, p in ROUTELLM_PRICE_PER_MTOK.items()),
    "as_given": "the cost column of the outcome file, in its own unit",
}
KNOB = "lambda in argmax_e(lambda * predicted_quality_e - predicted_cost_e); cost in cost_unit"


class Reach(BaseModel):
    """The cheapest single operating point (one λ, no mixing) at least as good as the best single."""

    knob: float
    quality: float
    cost: float
    cost_ratio: float = Field(description="cost / the best single expert's cost")


class Curve(BaseModel):
    name: str
    params: dict[str, object]
    aiq: float
    apgr: float | None
    reach_best_single: Reach | None
    quality_at_half_cost: float | None = Field(
        description="best quality of a single operating point costing at most half the best single's"
    )
    n_points: int
    points: list[SweepPoint]


class ZeroRouter(BaseModel):
    """Random mixtures of single experts (RouterBench's 'zero router'): what any router must beat."""

    aiq: float
    apgr: float | None


class OutcomeEvalResult(BaseModel):
    format: str
    cost_unit: str
    cost_note: str
    train_size: int
    test_size: int
    test_source: str
    knob: str = KNOB
    best_single: NamedPoint
    cheapest: NamedPoint
    oracle: CostQuality
    random: CostQuality
    singles: list[NamedPoint]
    aiq_range: tuple[float, float] = Field(description="cheapest .. most expensive single expert")
    apgr_weak: str
    apgr_strong: str
    apgr_warning: str | None = Field(
        None, description="set when the best single beats the cheapest only within noise: APGR is unstable"
    )
    points: list[SweepPoint] = Field(description="our router's curve (thinned for output)")
    aiq: float
    apgr: float | None
    reach_best_single: Reach | None
    half_cost_target_met: bool = Field(
        description="a point with >= best single quality at <= 50% of its cost"
    )
    router: Curve
    baseline: Curve
    aiq_gain_ci95: tuple[float, float] = Field(
        description="95% paired-bootstrap interval of router.aiq - baseline.aiq over the test prompts"
    )
    zero_router: ZeroRouter
    tuning: dict[str, Any] = Field(description="what tuning on the train side's validation part chose")


def _curve(name: str, params: dict[str, object], points: list[SweepPoint], test: OutcomeTable) -> Curve:
    singles = curves.single_experts(test)
    best, weak = curves.best_single(test), curves.cheapest_single(test)
    reach = curves.cheapest_reaching(points, best.quality)
    return Curve(
        name=name,
        params=params,
        aiq=curves.aiq(points, singles),
        apgr=curves.apgr(points, weak, best),
        reach_best_single=(
            Reach(knob=reach.knob, quality=reach.quality, cost=reach.cost, cost_ratio=reach.cost / best.cost)
            if reach
            else None
        ),
        quality_at_half_cost=curves.best_within(points, 0.5 * best.cost),
        n_points=len(points),
        points=curves.thin(points),
    )


def evaluate(
    train: OutcomeTable,
    test: OutcomeTable,
    train_vectors: np.ndarray,
    test_vectors: np.ndarray,
    test_source: str,
) -> OutcomeEvalResult:
    import numpy as np

    from routers.cost import training as cost_training
    from routers.cost.model import baseline

    report = cost_training.tune(train, train_vectors)
    model = cost_training.fit(train, train_vectors)
    found = model.search(test_vectors, max(report.best.k, report.baseline_k))
    base_model = baseline(model, report.baseline_k)
    # Predicted once per router: the curve and the bootstrap of the AIQ gain both sweep these.
    mine, theirs = (m.predict(np.empty((0, 0)), found) for m in (model.with_params(report.best), base_model))
    ours = _curve(
        "ours: kNN quality with distance weights and task-prior shrinkage",
        report.best.model_dump(),
        curves.sweep(mine.quality, mine.cost, test.quality, test.cost),
        test,
    )
    base = _curve(
        "RouterBench kNN (uniform k neighbours, mean outcome, mean cost)",
        base_model.params.model_dump(),
        curves.sweep(theirs.quality, theirs.cost, test.quality, test.cost),
        test,
    )
    gain = curves.aiq_gain_interval(
        (mine.quality, mine.cost), (theirs.quality, theirs.cost), test.quality, test.cost
    )
    singles = curves.single_experts(test)
    best, weak = curves.best_single(test), curves.cheapest_single(test)
    reach = ours.reach_best_single
    return OutcomeEvalResult(
        format=test.format,
        cost_unit=test.cost_unit,
        cost_note=COST_NOTES.get(test.cost_unit, test.cost_unit),
        train_size=len(train),
        test_size=len(test),
        test_source=test_source,
        best_single=best,
        cheapest=weak,
        oracle=curves.oracle(test),
        random=curves.random_router(test),
        singles=singles,
        aiq_range=(min(p.cost for p in singles), max(p.cost for p in singles)),
        apgr_weak=weak.name,
        apgr_strong=best.name,
        apgr_warning=curves.pgr_warning(weak, best, len(test)),
        points=ours.points,
        aiq=ours.aiq,
        apgr=ours.apgr,
        reach_best_single=reach,
        half_cost_target_met=reach is not None and reach.cost_ratio <= 0.5,
        router=ours,
        baseline=base,
        aiq_gain_ci95=gain,
        zero_router=ZeroRouter(aiq=curves.aiq(singles, singles), apgr=curves.apgr(singles, weak, best)),
        tuning=report.model_dump(),
    )
