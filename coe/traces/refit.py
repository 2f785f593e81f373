"""``coe fit-map --from-traces``: the category -> expert map refitted from production feedback, with
the same exact solver as ``coe fit-map`` (``coe.category_map.Frontier``); the command writes the
result with the same writer (``coe.category_map.map_yaml``).

Traces are bandit feedback: each request was graded for the one expert that served it. A (category,
expert) cell's quality is the mean grade of the requests it served; a cell with fewer than
``min_feedback`` grades is not a choice (an expert never tried in a category cannot be chosen on
faith), and a category with no such cell keeps the expert that served it most. So a refit can only
move a category to an expert that has served it: exploration (some traffic to other experts, or a
judge grading shadow answers) is what gives it somewhere to move to.

The solver sees each cell's lower confidence bound, mean - z * sd / sqrt(n), not its mean. Why: the
incumbent expert has most of a category's grades and the explored ones a few dozen each, so the best
of six noisy means beats the incumbent by chance (the winner's curse; bench/refit_loop.py measured a
refit on raw means losing 0.02 on later traffic while the replay predicted +0.09). ``z = 0`` is the
raw means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from coe.category_map import CategoryStats, Frontier, MapChoice
from coe.traces.record import Feedback, TraceRecord
from coe.traces.store import mean_scores

UNTRIED = -1e6  # quality of a cell without enough feedback: below every real bound, never chosen


class CellStats(BaseModel):
    expert: str
    graded: int
    quality: float = Field(description="mean grade")
    lower: float = Field(description="mean - z * standard error: what the solver compares")


class RefitCategory(BaseModel):
    expert: str
    share: float
    quality: float | None = Field(description="mean grade of the chosen expert here; None: kept, no feedback")
    was: str = Field(description="the expert that served this category most")
    cells: list[CellStats]


class RefitReport(BaseModel):
    records: int
    graded: int
    min_feedback: int
    confidence_z: float
    expected_quality: float | None = Field(description="share-weighted mean grade of the chosen cells")
    served_quality: float | None = Field(description="the same for the experts that served them")
    categories: dict[str, RefitCategory]
    changed: list[str] = Field(description="categories whose expert changes")


# Per category: how many routed requests each expert served; per (category, expert): the grades.
Served = dict[str, Counter[str]]
Grades = dict[tuple[str, str], list[float]]


def refit(
    records: Sequence[TraceRecord],
    feedback: Sequence[Feedback],
    *,
    min_feedback: int = 5,
    confidence_z: float = 1.645,
    cost: Mapping[str, float] | None = None,
    budget: float | None = None,
) -> RefitReport:
    """Fit the map; ``cost`` per expert and ``budget`` (average cost) bound it like ``--max-params``;
    ``confidence_z``: how many standard errors below its mean a cell counts (1.645: one-sided 95%)."""
    served, grades = _tally(records, feedback)
    stats = _solver_stats(served, grades, min_feedback, confidence_z, cost)
    fitted = Frontier(stats).best(budget)
    if fitted is None:
        raise ValueError(f"no map fits the budget {budget:g}")
    categories = {
        c: _choice(
            stats.share[i],
            served[c],
            {e: grades.get((c, e)) or [] for e in stats.experts},
            fitted.categories[c],
            confidence_z,
        )
        for i, c in enumerate(stats.categories)
    }
    return RefitReport(
        records=len(records),
        graded=sum(len(g) for g in grades.values()),
        min_feedback=min_feedback,
        confidence_z=confidence_z,
        expected_quality=_weighted(
            [(m.share, m.share * m.quality) for m in categories.values() if m.quality is not None]
        ),
        served_quality=_weighted(
            [
                (m.share, m.share * sum(g) / len(g))
                for c, m in categories.items()
                if len(g := grades.get((c, m.was)) or []) >= min_feedback
            ]
        ),
        categories=categories,
        changed=[c for c, m in categories.items() if m.expert != m.was],
    )


def _tally(records: Sequence[TraceRecord], feedback: Sequence[Feedback]) -> tuple[Served, Grades]:
    """Who served each category and the grades of each (category, expert) cell, from routed requests
    only: a pinned request says nothing about the router's map."""
    graded = mean_scores(feedback)
    served: Served = {}
    grades: Grades = {}
    for r in records:
        cat = r.decision.category if r.decision else None
        if cat is None or r.model != "coe":
            continue
        served.setdefault(cat, Counter())[r.expert] += 1
        if r.id in graded:
            grades.setdefault((cat, r.expert), []).append(graded[r.id])
    if not served:
        raise ValueError("no routed request with a category in the traces: nothing to refit")
    if not grades:
        raise ValueError("no feedback on routed requests: POST /v1/feedback or `coe judge` first")
    return served, grades


def _solver_stats(
    served: Served, grades: Grades, min_feedback: int, z: float, cost: Mapping[str, float] | None
) -> CategoryStats:
    """What the solver sees: each cell's lower bound (``UNTRIED`` under ``min_feedback`` grades)."""
    cats = sorted(served)
    experts = sorted({e for c in served.values() for e in c} | {e for _, e in grades})
    total = sum(sum(c.values()) for c in served.values())
    quality = [
        [_lower(g, z) if len(g := grades.get((c, e), [])) >= min_feedback else UNTRIED for e in experts]
        for c in cats
    ]
    return CategoryStats(
        categories=cats,
        experts=experts,
        share=[sum(served[c].values()) / total for c in cats],
        count=[sum(served[c].values()) for c in cats],
        quality=quality,
        cost=[[float((cost or {}).get(e, 0.0)) for e in experts] for _ in cats],
    )


def _choice(
    share: float, served: Counter[str], cells: Mapping[str, list[float]], pick: MapChoice, z: float
) -> RefitCategory:
    """One category: the solver's pick, or the expert that served it most where no cell had enough
    feedback to be a choice; ``cells``: the grades of each expert here."""
    was = served.most_common(1)[0][0]
    tried = pick.quality > UNTRIED
    expert = pick.expert if tried else was
    chosen = cells.get(expert) or []
    return RefitCategory(
        expert=expert,
        share=share,
        quality=sum(chosen) / len(chosen) if tried and chosen else None,
        was=was,
        cells=[
            CellStats(expert=e, graded=len(g), quality=sum(g) / len(g), lower=_lower(g, z))
            for e, g in cells.items()
            if g
        ],
    )


def _weighted(parts: Sequence[tuple[float, float]]) -> float | None:
    """Σ contribution / Σ weight over (weight, contribution) pairs; None when there are none."""
    total = weight = 0.0
    for w, contribution in parts:  # a running sum, as ever (sum() compensates since Python 3.12)
        total += contribution
        weight += w
    return total / weight if weight else None


def _lower(grades: Sequence[float], z: float) -> float:
    """mean - z * sd / sqrt(n), the sd floored so a cell of identical grades still pays for its size."""
    n = len(grades)
    mean = sum(grades) / n
    var = sum((g - mean) ** 2 for g in grades) / (n - 1) if n > 1 else 0.25
    return float(mean - z * max(var, 0.01) ** 0.5 / n**0.5)
