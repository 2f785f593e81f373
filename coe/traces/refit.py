"""``coe fit-map --from-traces``: the category -> expert map refitted from production feedback, with
the same exact solver as ``coe fit-map`` (routers.category.fit_map.Frontier).

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
    from routers.category.fit_map import CategoryStats, Frontier

    graded = mean_scores(feedback)
    by_cat: dict[str, Counter[str]] = {}
    grades: dict[tuple[str, str], list[float]] = {}
    for r in records:
        cat = r.decision.category if r.decision else None
        if cat is None or r.model != "coe":
            continue  # pinned requests say nothing about the router's map
        by_cat.setdefault(cat, Counter())[r.expert] += 1
        if r.id in graded:
            grades.setdefault((cat, r.expert), []).append(graded[r.id])
    if not by_cat:
        raise ValueError("no routed request with a category in the traces: nothing to refit")
    if not grades:
        raise ValueError("no feedback on routed requests: POST /v1/feedback or `coe judge` first")
    cats = sorted(by_cat)
    experts = sorted({e for c in by_cat.values() for e in c} | {e for _, e in grades})
    total = sum(sum(c.values()) for c in by_cat.values())
    quality, costs = [], []
    for c in cats:
        row = []
        for e in experts:
            g = grades.get((c, e), [])
            row.append(_lower(g, confidence_z) if len(g) >= min_feedback else UNTRIED)
        quality.append(row)
        costs.append([float((cost or {}).get(e, 0.0)) for e in experts])
    stats = CategoryStats(
        categories=cats,
        experts=experts,
        share=[sum(by_cat[c].values()) / total for c in cats],
        count=[sum(by_cat[c].values()) for c in cats],
        quality=quality,
        cost=costs,
    )
    fitted = Frontier(stats).best(budget)
    if fitted is None:
        raise ValueError(f"no map fits the budget {budget:g}")
    out: dict[str, RefitCategory] = {}
    exp_q = served_q = 0.0
    exp_w = served_w = 0.0
    for i, c in enumerate(cats):
        was = by_cat[c].most_common(1)[0][0]
        choice = fitted.categories[c]
        tried = choice.quality > UNTRIED
        expert = choice.expert if tried else was
        cells = [
            CellStats(expert=e, graded=len(g), quality=sum(g) / len(g), lower=_lower(g, confidence_z))
            for e in experts
            if (g := grades.get((c, e)) or [])
        ]
        chosen = grades.get((c, expert)) or []
        mean = sum(chosen) / len(chosen) if tried and chosen else None
        out[c] = RefitCategory(
            expert=expert,
            share=stats.share[i],
            quality=mean,
            was=was,
            cells=cells,
        )
        if mean is not None:
            exp_q += stats.share[i] * mean
            exp_w += stats.share[i]
        was_g = grades.get((c, was)) or []
        if len(was_g) >= min_feedback:
            served_q += stats.share[i] * sum(was_g) / len(was_g)
            served_w += stats.share[i]
    return RefitReport(
        records=len(records),
        graded=sum(len(g) for g in grades.values()),
        min_feedback=min_feedback,
        confidence_z=confidence_z,
        expected_quality=exp_q / exp_w if exp_w else None,
        served_quality=served_q / served_w if served_w else None,
        categories=out,
        changed=[c for c, m in out.items() if m.expert != m.was],
    )


def _lower(grades: Sequence[float], z: float) -> float:
    """mean - z * sd / sqrt(n), the sd floored so a cell of identical grades still pays for its size."""
    n = len(grades)
    mean = sum(grades) / n
    var = sum((g - mean) ** 2 for g in grades) / (n - 1) if n > 1 else 0.25
    return float(mean - z * max(var, 0.01) ** 0.5 / n**0.5)


def to_yaml(report: RefitReport, source: str) -> str:
    """A ``router.categories`` fragment (each category's ``expert``) and the report beside it."""
    import yaml

    head = (
        f"# Refitted by `coe fit-map --from-traces` from {source}.\n"
        "# Copy router.categories into experts.yaml (the categories keep their examples and\n"
        "# descriptions there); `coe replay --config` on the result says what it would change.\n"
    )
    body = {
        "router": {"categories": {c: {"expert": m.expert} for c, m in report.categories.items()}},
        "report": report.model_dump(mode="json"),
    }
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)
