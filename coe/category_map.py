"""The category -> expert map of a two-step router: its exact solver, and the experts.yaml fragment it
is written as. ``coe fit-map`` fits it on evaluation outcomes (``routers.category.fit_map``) and
``coe fit-map --from-traces`` on production feedback (``coe.traces.refit``); both use this one solver
and this one writer, which is why they live in the engine and not in the category router's room.

Given, per category, each expert's mean quality and mean cost (or active parameters), choose one
expert per category to maximise the expected quality ``Σ_c share_c * quality[c, e(c)]``, optionally
with ``Σ_c share_c * cost[c, e(c)] <= budget``.

Why an exact method: this is a multiple-choice knapsack, and a greedy pass (upgrade the category with
the best quality gain per unit of cost first) can stop short of the optimum when one costly upgrade
blocks two cheaper ones. We compute the whole Pareto frontier instead: categories are added one at a
time and every (cost, quality) combination dominated by another (no cheaper and no better) is dropped.
Nothing optimal is ever dropped, so the result is exact for every budget at once, with no
discretisation of the budget. The frontier stays small in practice: with 0/1 outcomes the total
quality takes at most n + 1 values (one per count of correct answers), and each value keeps only its
cheapest map (RouteLLM's 58 categories x 2 experts: 755 points, built in milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import numpy as np

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


def _pareto(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the undominated points: each strictly better than every cheaper-or-equal one."""
    import numpy as np

    order = np.lexsort((-quality, cost))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], quality[order][:-1]]))
    return order[quality[order] > best_before + _EPS]  # in cost order, so quality ascends too


def map_yaml(experts: Mapping[str, str], report: Mapping[str, Any], comments: Sequence[str]) -> str:
    """A ``router.categories`` fragment (each category's ``expert``) to copy into experts.yaml, with
    the report beside it; ``comments`` head the file, one ``#`` line each (where the map came from and
    how to use it)."""
    import yaml

    head = "".join(f"# {line}\n" for line in comments)
    body = {"router": {"categories": {c: {"expert": e} for c, e in experts.items()}}, "report": dict(report)}
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)
