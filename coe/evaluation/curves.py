"""Quality-versus-cost curves of routers on an outcome table, and the numbers that summarise them.

Definitions (stated here once; the CLI, the benchmark and the README use these):

* A router with a knob λ picks, per prompt, ``argmax_j (λ * q̂_j - ĉ_j)`` from its predicted quality
  q̂ and predicted cost ĉ. ``sweep`` computes the *exact* curve: every λ at which some prompt changes
  its choice is found (the upper envelope of the lines λ*q̂_j - ĉ_j, per prompt), so no grid of
  knob values can favour one router over another.
* The *envelope* of a set of (cost, quality) points is their upper convex hull (mixing two operating
  points at random reaches every point between them), kept non-decreasing (flat after its highest
  point). Left of the cheapest point it is 0: nothing cheaper is reachable.
* AIQ (RouterBench) = the area under the envelope over ``[lo, hi]`` divided by ``hi - lo``; we use
  RouterBench's range: cheapest single expert to most expensive single expert (mean cost per prompt).
* PGR of a point = (quality - weak) / (strong - weak). Weak = the cheapest single expert (ties: the
  best of them), strong = the best single expert (ties: the cheapest). APGR = the mean PGR of the
  envelope over the cost range ``[cost(weak), cost(strong)]``, i.e. the area version. With two experts
  this is RouteLLM's APGR over "share of calls to the strong model".

Every cost is the mean cost per prompt in the table's unit (``OutcomeTable.cost_unit``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable


class CostQuality(BaseModel):
    quality: float
    cost: float


class NamedPoint(CostQuality):
    name: str


class SweepPoint(CostQuality):
    knob: float


def outcome_of(table: OutcomeTable, choice: np.ndarray, cost: np.ndarray | None = None) -> CostQuality:
    """Mean true quality and cost (``cost``: another scale than the table's) when prompt i goes to
    expert ``choice[i]``."""
    import numpy as np

    cost = table.cost if cost is None else cost
    rows = np.arange(len(table))
    return CostQuality(
        quality=float(table.quality[rows, choice].mean()), cost=float(cost[rows, choice].mean())
    )


def single_experts(table: OutcomeTable) -> list[NamedPoint]:
    q, c = table.quality.mean(axis=0), table.cost.mean(axis=0)
    return [NamedPoint(name=m, quality=float(q[j]), cost=float(c[j])) for j, m in enumerate(table.models)]


def best_single(table: OutcomeTable) -> NamedPoint:
    return min(single_experts(table), key=lambda p: (-p.quality, p.cost))


def cheapest_single(table: OutcomeTable) -> NamedPoint:
    return min(single_experts(table), key=lambda p: (p.cost, -p.quality))


def oracle(table: OutcomeTable) -> CostQuality:
    """Per prompt the best expert, the cheapest among equally good ones."""
    import numpy as np

    best = table.quality.max(axis=1, keepdims=True)
    cost = np.where(table.quality >= best - 1e-12, table.cost, np.inf)
    return outcome_of(table, cost.argmin(axis=1))


def random_router(table: OutcomeTable) -> CostQuality:
    """Expected outcome of picking an expert uniformly at random for each prompt."""
    return CostQuality(quality=float(table.quality.mean()), cost=float(table.cost.mean()))


# ------------------------------------------------------------------------------------- sweeps


def choice_at(pred_quality: np.ndarray, pred_cost: np.ndarray, knob: float) -> np.ndarray:
    """The experts a router picks at one knob value (ties: the cheaper, then the better)."""
    import numpy as np

    utility = knob * pred_quality - pred_cost
    best = utility.max(axis=1, keepdims=True)
    tie = utility >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    key = np.where(tie, pred_cost - 1e-9 * pred_quality, np.inf)
    chosen: np.ndarray = key.argmin(axis=1)
    return chosen


def sweep(
    pred_quality: np.ndarray, pred_cost: np.ndarray, true_quality: np.ndarray, true_cost: np.ndarray
) -> list[SweepPoint]:
    """Every distinct operating point of ``argmax(λ q̂ - ĉ)`` for λ from 0 to infinity.

    Per prompt, the chosen expert as λ grows walks the upper envelope of the lines λ q̂_j - ĉ_j:
    start at the cheapest (best of the cheapest on ties) and jump to the line that overtakes first.
    All jumps of all prompts, sorted by λ, give the whole curve in O(n m^2). ``knob`` is a λ inside
    the interval where the point holds (geometric midpoint of its breakpoints).
    """
    import numpy as np

    n, _ = pred_quality.shape
    rows = np.arange(n)
    q, c = pred_quality.astype(np.float64), pred_cost.astype(np.float64)
    cur = choice_at(q, c, 0.0)
    start = cur.copy()
    lam_cur = np.zeros(n)
    ev_lam, ev_row, ev_from, ev_to = [], [], [], []
    active = np.ones(n, dtype=bool)
    while active.any():
        dq = q - q[rows, cur][:, None]
        dc = c - c[rows, cur][:, None]
        valid = (dq > 1e-12) & active[:, None]
        lam = np.where(valid, dc / np.where(valid, dq, 1.0), np.inf)
        lam = np.maximum(lam, lam_cur[:, None])
        lam_min = lam.min(axis=1)
        active = np.isfinite(lam_min)
        if not active.any():
            break
        at_min = valid & (lam <= lam_min[:, None] * (1 + 1e-12) + 1e-300)
        nxt = np.where(at_min, q, -np.inf).argmax(axis=1)
        idx = np.flatnonzero(active)
        ev_lam.append(lam_min[idx])
        ev_row.append(idx)
        ev_from.append(cur[idx])
        ev_to.append(nxt[idx])
        cur = np.where(active, nxt, cur)
        lam_cur = np.where(active, lam_min, lam_cur)
    tq, tc = true_quality.astype(np.float64), true_cost.astype(np.float64)
    total_q, total_c = tq[rows, start].sum(), tc[rows, start].sum()
    if not ev_lam:
        return [SweepPoint(knob=0.0, quality=total_q / n, cost=total_c / n)]
    lams = np.concatenate(ev_lam)
    r, f, t = np.concatenate(ev_row), np.concatenate(ev_from), np.concatenate(ev_to)
    order = np.argsort(lams, kind="stable")
    lams, r, f, t = lams[order], r[order], f[order], t[order]
    cum_q = total_q + np.cumsum(tq[r, t] - tq[r, f])
    cum_c = total_c + np.cumsum(tc[r, t] - tc[r, f])
    last = np.flatnonzero(np.append(lams[1:] != lams[:-1], True))  # end of each group of equal λ
    starts = np.concatenate([[0.0], lams[last]])
    ends = np.append(starts[1:], np.inf)
    points = [SweepPoint(knob=_midpoint(starts[0], ends[0]), quality=total_q / n, cost=total_c / n)]
    for i, g in enumerate(last, start=1):
        points.append(SweepPoint(knob=_midpoint(starts[i], ends[i]), quality=cum_q[g] / n, cost=cum_c[g] / n))
    return points


def _midpoint(lo: float, hi: float) -> float:
    if hi == float("inf"):
        return float(lo * 2 if lo > 0 else 1.0)
    if lo <= 0:
        return float(hi / 2)
    return float((lo * hi) ** 0.5)


def thin(points: Sequence[SweepPoint], keep: int = 60) -> list[SweepPoint]:
    """At most ``keep`` points for output: the envelope's corners plus points evenly spaced in cost."""
    import numpy as np

    if len(points) <= keep:
        return list(points)
    corners = {(p.cost, p.quality) for p in envelope(points)}
    chosen = [i for i, p in enumerate(points) if (p.cost, p.quality) in corners]
    costs = np.array([p.cost for p in points])
    room = max(keep - len(chosen), 2)
    for target in np.linspace(costs.min(), costs.max(), room):
        chosen.append(int(np.abs(costs - target).argmin()))
    return [points[i] for i in sorted(set(chosen))]


# ---------------------------------------------------------------------------- AIQ and APGR


def envelope(points: Sequence[CostQuality]) -> list[CostQuality]:
    """Upper convex hull from the cheapest point to the best one (so it is non-decreasing)."""
    pts = sorted({(p.cost, p.quality) for p in points})
    # Keep, per cost, the best quality only.
    best: dict[float, float] = {}
    for x, y in pts:
        best[x] = max(best.get(x, y), y)
    pts = sorted(best.items())
    hull: list[tuple[float, float]] = []
    for x, y in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # hull[-1] is on or below the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    return [CostQuality(cost=x, quality=y) for x, y in hull[: top + 1]]


def area(points: Sequence[CostQuality], lo: float, hi: float) -> float:
    """Mean of the envelope over [lo, hi]: 0 left of its cheapest point, flat right of its last."""
    import numpy as np

    if hi <= lo:
        raise ValueError(f"empty cost range [{lo}, {hi}]")
    hull = envelope(points)
    xs = np.array([p.cost for p in hull])
    ys = np.array([p.quality for p in hull])
    a = max(lo, float(xs[0]))
    if a >= hi:
        return 0.0
    grid = np.unique(np.concatenate([[a, hi], xs[(xs > a) & (xs < hi)]]))
    vals = np.interp(grid, xs, ys)  # flat beyond the last corner
    return float(np.trapezoid(vals, grid) / (hi - lo))


def aiq(points: Sequence[CostQuality], singles: Sequence[CostQuality]) -> float:
    """RouterBench's AIQ over the range cheapest single expert .. most expensive single expert."""
    lo, hi = min(p.cost for p in singles), max(p.cost for p in singles)
    return area(points, lo, hi)


def aiq_gain_interval(
    ours: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    quality: np.ndarray,
    cost: np.ndarray,
    draws: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """95% paired-bootstrap interval of AIQ(ours) - AIQ(other), each router given as its (predicted
    quality, predicted cost) per prompt and expert, on the true ``quality`` and ``cost``.

    Why: a few hundred test prompts make an AIQ gain of a few thousandths possibly luck. Resampling
    the prompts, the same resample for both routers so that what the prompts share cancels, shows how
    far the gain moves on another test side drawn like this one. The routers stay as fitted: what
    another training side would change is not in the interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(draws):
        rows = rng.integers(0, len(quality), len(quality))
        q, c = quality[rows], cost[rows]
        singles = [
            CostQuality(quality=float(a), cost=float(b)) for a, b in zip(q.mean(0), c.mean(0), strict=True)
        ]
        mine = aiq(sweep(ours[0][rows], ours[1][rows], q, c), singles)
        gains.append(mine - aiq(sweep(other[0][rows], other[1][rows], q, c), singles))
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return float(lo), float(hi)


def apgr(points: Sequence[CostQuality], weak: CostQuality, strong: CostQuality) -> float | None:
    """Mean PGR of the envelope over [cost(weak), cost(strong)]; None when that range is empty or
    the strong expert is no better than the weak one (PGR undefined)."""
    if strong.cost <= weak.cost or strong.quality <= weak.quality:
        return None
    mean_quality = area(points, weak.cost, strong.cost)
    return (mean_quality - weak.quality) / (strong.quality - weak.quality)


def cheapest_reaching(points: Sequence[SweepPoint], quality: float) -> SweepPoint | None:
    """The cheapest actual operating point (one knob value, no mixing) with at least ``quality``."""
    ok = [p for p in points if p.quality >= quality - 1e-12]
    return min(ok, key=lambda p: p.cost) if ok else None


def best_within(points: Sequence[CostQuality], budget: float) -> float | None:
    """The best quality of an actual operating point costing at most ``budget`` (None: none does).
    The half-cost target reads it at half the best single expert's cost."""
    under = [p.quality for p in points if p.cost <= budget]
    return max(under) if under else None


def pgr_warning(weak: CostQuality, strong: CostQuality, n: int) -> str | None:
    """Why APGR may mean nothing on a table: it divides by strong − weak quality, and when that gap is
    within noise (under two standard errors of a difference of two means over ``n`` prompts, with
    the p(1 − p) variance bound that holds for any score in [0, 1]) a few prompts swing it by whole
    units (RouterDC's best and cheapest models are that close: docs/benchmarks/outcome_curves.md)."""
    gap = strong.quality - weak.quality
    spread = 2 * math.sqrt(
        (strong.quality * (1 - strong.quality) + weak.quality * (1 - weak.quality)) / max(n, 1)
    )
    if gap <= 0 or gap >= spread:  # no lead: apgr() is None already, nothing to warn about
        return None
    return (
        f"the best single beats the cheapest by {gap:.4f}, within noise (two standard errors: "
        f"{spread:.4f} on {n} prompts); APGR divides by that gap and means little here: read AIQ"
    )
