"""``coe fit-map``: the category -> expert map of a two-step router fitted on per-prompt outcomes (CoE's
second step), with the engine's exact solver (``coe.category_map``: the Pareto frontier over
categories, exact for every budget at once).

``fit`` wraps it: the budget is on the table's cost column or on active parameters (billions, from
experts.yaml ``params_b`` or the table when its cost is a parameter count), and the report gives both
averages = Σ_category share x size of its expert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from coe.category_map import CategoryStats, Frontier, MapChoice
from coe.evaluation.curves import CostQuality, NamedPoint, outcome_of

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable


def category_stats(table: OutcomeTable, cost: np.ndarray | None = None) -> CategoryStats:
    """Group a table by its task column; ``cost`` replaces the table's cost (e.g. parameter counts)."""
    import numpy as np

    cost = table.cost if cost is None else cost
    cats = sorted(set(table.tasks))
    index = {c: i for i, c in enumerate(cats)}
    task = np.array([index[t] for t in table.tasks])
    counts = np.bincount(task, minlength=len(cats))
    q = np.zeros((len(cats), len(table.models)))
    k = np.zeros_like(q)
    np.add.at(q, task, table.quality)
    np.add.at(k, task, cost)
    return CategoryStats(
        categories=cats,
        experts=list(table.models),
        share=(counts / counts.sum()).tolist(),
        count=counts.tolist(),
        quality=(q / counts[:, None]).tolist(),
        cost=(k / counts[:, None]).tolist(),
    )


def evaluate_map(table: OutcomeTable, mapping: dict[str, str], cost: np.ndarray | None = None) -> CostQuality:
    """Quality and mean cost of a fitted map on other prompts; unseen categories go to the map's
    most common expert (what a deployment does: the fallback)."""
    import numpy as np

    default = Counter(mapping.values()).most_common(1)[0][0]
    col = {m: j for j, m in enumerate(table.models)}
    return outcome_of(table, np.array([col[mapping.get(t, default)] for t in table.tasks]), cost)


class Budget(BaseModel):
    kind: str = Field(description="cost (the table's cost column) or params (active parameters, billions)")
    limit: float


class MapOutcome(BaseModel):
    quality: float
    average_cost: float
    average_active_params_b: float | None
    prompts: int


class FitMapReport(BaseModel):
    format: str
    sources: list[str]
    cost_unit: str
    budget: Budget | None
    feasible: bool = Field(description="false when even the cheapest map exceeds the budget")
    expected_quality: float | None = Field(description="on the prompts the map was fitted on")
    average_cost: float | None
    average_active_params_b: float | None
    categories: dict[str, MapChoice]
    best_single: NamedPoint
    unconstrained_quality: float
    frontier: list[CostQuality] = Field(description="best quality per budget (on the budget's scale)")
    test: MapOutcome | None = Field(None, description="the same map on held-out prompts")


def params_matrix(table: OutcomeTable, params_b: Mapping[str, float] | None) -> np.ndarray | None:
    """Active parameters per (prompt, expert): from ``params_b`` or from a parameter-count table."""
    import numpy as np

    if params_b:
        missing = [m for m in table.models if m not in params_b]
        if missing:
            raise ValueError(f"no params_b for expert(s) {', '.join(missing)} in the registry")
        return np.tile(np.array([params_b[m] for m in table.models], dtype=np.float64), (len(table), 1))
    return table.cost if table.cost_unit == "params_b" else None


def fit(
    table: OutcomeTable,
    budget: Budget | None = None,
    params_b: Mapping[str, float] | None = None,
    test: OutcomeTable | None = None,
) -> FitMapReport:
    """The best map under the budget, and what it delivers (in sample, and on ``test`` if given)."""
    from coe.evaluation.curves import best_single

    params = params_matrix(table, params_b)
    if budget is not None and budget.kind == "params" and params is None:
        raise ValueError(
            f"a budget on active parameters needs parameter counts: the table's cost is {table.cost_unit}; "
            "give --config with params_b for every expert"
        )
    scale = params if budget is not None and budget.kind == "params" else table.cost
    frontier = Frontier(category_stats(table, scale))
    chosen = frontier.best(budget.limit if budget else None)
    top = frontier.best()
    assert top is not None  # without a budget some map always exists
    mapping = {c: m.expert for c, m in (chosen.categories if chosen else {}).items()}
    stats = category_stats(table)  # per-category cost on the table's own scale, for the report
    cats = {}
    if chosen is not None:
        index = {c: i for i, c in enumerate(stats.categories)}
        for c, m in chosen.categories.items():
            e = stats.experts.index(m.expert)
            cats[c] = m.model_copy(update={"cost": stats.cost[index[c]][e]})
    return FitMapReport(
        format=table.format,
        sources=table.sources,
        cost_unit=table.cost_unit,
        budget=budget,
        feasible=chosen is not None,
        expected_quality=chosen.expected_quality if chosen else None,
        average_cost=evaluate_map(table, mapping).cost if chosen else None,
        average_active_params_b=(
            evaluate_map(table, mapping, params).cost if chosen and params is not None else None
        ),
        categories=cats,
        best_single=best_single(table),
        unconstrained_quality=top.expected_quality,
        frontier=_points(frontier),
        test=_on(test, mapping, params_b) if test is not None and mapping else None,
    )


def _points(frontier: Frontier, keep: int = 40) -> list[CostQuality]:
    """At most ``keep`` points of the frontier, evenly spread along it (for the report)."""
    import numpy as np

    cost, quality = frontier.cost, frontier.quality
    idx = np.unique(np.linspace(0, len(cost) - 1, min(keep, len(cost))).round().astype(int))
    return [CostQuality(cost=float(cost[i]), quality=float(quality[i])) for i in idx]


def _on(test: OutcomeTable, mapping: dict[str, str], params_b: Mapping[str, float] | None) -> MapOutcome:
    params = params_matrix(test, params_b)
    at = evaluate_map(test, mapping)
    return MapOutcome(
        quality=at.quality,
        average_cost=at.cost,
        average_active_params_b=evaluate_map(test, mapping, params).cost if params is not None else None,
        prompts=len(test),
    )
