"""Fit the category -> expert map of a two-step router from per-prompt outcomes (CoE's second step).

Given, per category, each expert's mean quality and mean cost (or active parameters) on evaluation
prompts, choose one expert per category to maximise the expected quality
``Σ_c share_c * quality[c, e(c)]``, optionally with ``Σ_c share_c * cost[c, e(c)] <= budget``.

Why an exact method: this is a multiple-choice knapsack, and a greedy pass (upgrade the category with
the best quality gain per unit of cost first) can stop short of the optimum when one costly upgrade
blocks two cheaper ones. We compute the whole Pareto frontier instead: categories are added one at a
time and every (cost, quality) combination dominated by another (no cheaper and no better) is dropped.
Nothing optimal is ever dropped, so the result is exact for every budget at once, with no
discretisation of the budget. The frontier stays small in practice: with 0/1 outcomes the total
quality takes at most n + 1 values (one per count of correct answers), and each value keeps only its
cheapest map (RouteLLM's 58 categories x 2 experts: 755 points, built in milliseconds).

``fit`` wraps it for ``coe fit-map``: the budget is on the table's cost column or on active parameters
(billions, from experts.yaml ``params_b`` or the table when its cost is a parameter count), and the
report gives both averages = Σ_category share x size of its expert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from coe.evaluation.curves import CostQuality, NamedPoint, outcome_of

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable

_EPS = 1e-12


class CategoryStats(BaseModel):
    """Per category: its share of prompts and each expert's mean quality and cost on it."""

    categories: list[str]
    experts: list[str]
    share: list[float]
    count: list[int]
    quality: list[list[float]] = Field(description="categories x experts")
    cost: list[list[float]] = Field(description="categories x experts")


class MapChoice(BaseModel):
    expert: str
    share: float
    quality: float
    cost: float


class FittedMap(BaseModel):
    """One category -> expert map and what it is expected to deliver on the prompts it was fitted on."""

    categories: dict[str, MapChoice]
    expected_quality: float
    average_cost: float


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


class Frontier:
    """Every Pareto-optimal map: ``cost`` ascending, ``quality`` strictly ascending."""

    def __init__(self, stats: CategoryStats) -> None:
        import numpy as np

        self.stats = stats
        share = np.array(stats.share)
        q = np.array(stats.quality) * share[:, None]  # contribution of each (category, expert)
        k = np.array(stats.cost) * share[:, None]
        cost, quality = np.zeros(1), np.zeros(1)
        self._steps: list[tuple[np.ndarray, np.ndarray]] = []  # per category: (parent, expert)
        for c in range(len(stats.categories)):
            options = _pareto(k[c], q[c])  # experts no other beats on both
            parent = np.repeat(np.arange(len(cost)), len(options))
            expert = np.tile(options, len(cost))
            cand_cost = cost[parent] + k[c, expert]
            cand_quality = quality[parent] + q[c, expert]
            keep = _pareto(cand_cost, cand_quality)
            cost, quality = cand_cost[keep], cand_quality[keep]
            self._steps.append((parent[keep], expert[keep]))
        self.cost, self.quality = cost, quality

    def __len__(self) -> int:
        return len(self.cost)

    def best(self, budget: float | None = None) -> FittedMap | None:
        """The best map whose average cost is within ``budget`` (None: no limit); None if none is."""
        import numpy as np

        ok = np.ones(len(self.cost), dtype=bool) if budget is None else self.cost <= budget * (1 + 1e-9)
        if not ok.any():
            return None
        return self._map(int(np.flatnonzero(ok)[-1]))  # quality ascends along the frontier

    def _map(self, i: int) -> FittedMap:
        chosen = [0] * len(self._steps)
        for c in range(len(self._steps) - 1, -1, -1):
            parent, expert = self._steps[c]
            chosen[c] = int(expert[i])
            i = int(parent[i])
        s = self.stats
        cats = {
            name: MapChoice(expert=s.experts[e], share=s.share[c], quality=s.quality[c][e], cost=s.cost[c][e])
            for c, (name, e) in enumerate(zip(s.categories, chosen, strict=True))
        }
        return FittedMap(
            categories=cats,
            expected_quality=sum(m.share * m.quality for m in cats.values()),
            average_cost=sum(m.share * m.cost for m in cats.values()),
        )

    def points(self, keep: int = 40) -> list[CostQuality]:
        import numpy as np

        idx = np.unique(np.linspace(0, len(self.cost) - 1, min(keep, len(self.cost))).round().astype(int))
        return [CostQuality(cost=float(self.cost[i]), quality=float(self.quality[i])) for i in idx]


def _pareto(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the undominated points: each strictly better than every cheaper-or-equal one."""
    import numpy as np

    order = np.lexsort((-quality, cost))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], quality[order][:-1]]))
    return order[quality[order] > best_before + _EPS]  # in cost order, so quality ascends too


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
        frontier=frontier.points(),
        test=_on(test, mapping, params_b) if test is not None and mapping else None,
    )


def _on(test: OutcomeTable, mapping: dict[str, str], params_b: Mapping[str, float] | None) -> MapOutcome:
    params = params_matrix(test, params_b)
    at = evaluate_map(test, mapping)
    return MapOutcome(
        quality=at.quality,
        average_cost=at.cost,
        average_active_params_b=evaluate_map(test, mapping, params).cost if params is not None else None,
        prompts=len(test),
    )


def to_yaml(report: FitMapReport) -> str:
    """A ``router.categories`` fragment to copy into experts.yaml, and the report beside it."""
    import yaml

    head = (
        f"# Fitted by `coe fit-map` from {report.format} outcomes ({', '.join(report.sources)}).\n"
        "# Copy router.categories into experts.yaml (each category there also needs examples or a\n"
        "# description for the classifier, and each expert name must be an expert of the registry).\n"
    )
    body = {
        "router": {"categories": {c: {"expert": m.expert} for c, m in report.categories.items()}},
        "report": report.model_dump(mode="json", exclude={"categories"})
        | {"per_category": {c: m.model_dump() for c, m in report.categories.items()}},
    }
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)
