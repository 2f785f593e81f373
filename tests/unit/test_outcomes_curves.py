"""Quality-versus-cost curves: the exact λ sweep, AIQ, APGR and the baselines (numbers by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from coe.evaluation import curves
from coe.evaluation.curves import CostQuality, SweepPoint
from coe.evaluation.outcomes import OutcomeTable


def _table(quality: list[list[float]], cost: list[list[float]]) -> OutcomeTable:
    n = len(quality)
    return OutcomeTable(
        format="coe",
        ids=[str(i) for i in range(n)],
        prompts=[f"p{i}" for i in range(n)],
        tasks=["t"] * n,
        models=[f"m{j}" for j in range(len(quality[0]))],
        quality=np.array(quality, dtype=float),
        cost=np.array(cost, dtype=float),
        cost_unit="as_given",
    )


def test_baselines_by_hand() -> None:
    # m0 cheap and right on prompt 0; m1 dear and right on prompts 1 and 2.
    t = _table([[1, 1], [0, 1], [0, 1]], [[1, 10], [1, 10], [1, 10]])
    best = curves.best_single(t)
    assert (best.name, best.quality, best.cost) == ("m1", 1.0, 10.0)
    cheap = curves.cheapest_single(t)
    assert (cheap.name, cheap.quality, cheap.cost) == ("m0", pytest.approx(1 / 3), 1.0)
    oracle = curves.oracle(t)  # prompt 0 goes to the cheap one: both are right there
    assert oracle.quality == 1.0 and oracle.cost == pytest.approx(7.0)
    rnd = curves.random_router(t)
    assert rnd.quality == pytest.approx(4 / 6) and rnd.cost == pytest.approx(5.5)


def test_sweep_visits_every_decision_of_every_knob() -> None:
    """The exact sweep equals brute force: every λ on a fine grid lands on a swept point, and each
    swept point is what the router does at its reported knob."""
    rng = np.random.default_rng(7)
    n, m = 40, 5
    pq, pc = rng.random((n, m)), rng.random((n, m)) * rng.random(m) * 10
    tq, tc = (rng.random((n, m)) > 0.5).astype(float), pc * rng.uniform(0.8, 1.2, (n, m))
    points = curves.sweep(pq, pc, tq, tc)
    rows = np.arange(n)
    swept = {(round(p.quality, 9), round(p.cost, 9)) for p in points}
    for lam in np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 400)]):
        choice = curves.choice_at(pq, pc, float(lam))
        assert (round(tq[rows, choice].mean(), 9), round(tc[rows, choice].mean(), 9)) in swept
    for p in points:
        choice = curves.choice_at(pq, pc, p.knob)
        assert tq[rows, choice].mean() == pytest.approx(p.quality)
        assert tc[rows, choice].mean() == pytest.approx(p.cost)
    assert points[0].cost == pytest.approx(tc[rows, pc.argmin(axis=1)].mean())  # λ=0: cheapest
    assert points[-1].quality == pytest.approx(tq[rows, pq.argmax(axis=1)].mean())  # λ→∞: best predicted


def test_aiq_is_the_mean_of_the_nondecreasing_hull_over_the_singles_range() -> None:
    singles = [CostQuality(cost=1, quality=0.5), CostQuality(cost=3, quality=0.9)]
    # Mixing the two singles: the line from 0.5 to 0.9, mean 0.7.
    assert curves.aiq(singles, singles) == pytest.approx(0.7)
    router = [
        SweepPoint(knob=0, cost=1, quality=0.5),
        SweepPoint(knob=1, cost=2, quality=0.9),
        SweepPoint(knob=2, cost=3, quality=0.6),  # dearer and worse: the hull stays flat at 0.9
        SweepPoint(knob=3, cost=1.5, quality=0.55),  # under the chord: not on the hull
    ]
    assert [(p.cost, p.quality) for p in curves.envelope(router)] == [(1, 0.5), (2, 0.9)]
    assert curves.aiq(router, singles) == pytest.approx((0.7 + 0.9) / 2)
    # A router that cannot go below cost 2 gets nothing left of it.
    assert curves.aiq([CostQuality(cost=2, quality=1.0)], singles) == pytest.approx(0.5)


def test_apgr_is_the_mean_pgr_between_weak_and_strong() -> None:
    weak, strong = CostQuality(cost=1, quality=0.5), CostQuality(cost=3, quality=0.9)
    assert curves.apgr([weak, strong], weak, strong) == pytest.approx(0.5)  # mixing: PGR 0 -> 1
    reaches_strong_at_2 = [weak, CostQuality(cost=2, quality=0.9)]
    assert curves.apgr(reaches_strong_at_2, weak, strong) == pytest.approx(0.75)
    assert curves.apgr([weak], weak, weak) is None  # no range: undefined, not a number


def test_cheapest_reaching_uses_real_operating_points() -> None:
    points = [SweepPoint(knob=0, cost=1, quality=0.5), SweepPoint(knob=1, cost=2, quality=0.9)]
    reach = curves.cheapest_reaching(points, 0.9)
    assert reach is not None and reach.cost == 2
    assert curves.cheapest_reaching(points, 0.95) is None


def test_apgr_is_flagged_when_the_best_single_is_no_clearer_winner_than_noise() -> None:
    # RouterDC's test side: the best model beats the cheapest by 3 prompts of 2,608.
    cheapest, best = CostQuality(cost=7.24, quality=0.5857), CostQuality(cost=8.03, quality=0.5869)
    warning = curves.pgr_warning(cheapest, best, 2608)
    assert warning is not None and "0.0012" in warning and "within noise" in warning
    # RouterBench's: 0.557 against 0.871 on 598 prompts is no accident.
    assert (
        curves.pgr_warning(CostQuality(cost=1, quality=0.557), CostQuality(cost=60, quality=0.871), 598)
        is None
    )
    # The same small gap on a huge table is real, and APGR means something again.
    assert curves.pgr_warning(cheapest, best, 50_000_000) is None
    assert curves.pgr_warning(best, best, 2608) is None  # the cheapest is the best: APGR is n/a, not noisy


def test_best_within_a_budget_reads_real_operating_points() -> None:
    points = [SweepPoint(knob=0, cost=1, quality=0.5), SweepPoint(knob=1, cost=4, quality=0.9)]
    points.append(SweepPoint(knob=2, cost=5, quality=1.0))
    assert curves.best_within(points, 4.0) == 0.9  # the point at cost 5 does not fit
    assert curves.best_within(points, 5.0) == 1.0
    assert curves.best_within(points, 0.5) is None  # nothing is that cheap: no number is made up


def test_thin_keeps_the_hull_corners() -> None:
    rng = np.random.default_rng(1)
    points = [
        SweepPoint(knob=i, cost=float(c), quality=float(q)) for i, (c, q) in enumerate(rng.random((500, 2)))
    ]
    kept = curves.thin(points, keep=40)
    assert len(kept) <= 60
    corners = {(p.cost, p.quality) for p in curves.envelope(points)}
    assert corners <= {(p.cost, p.quality) for p in kept}


def test_the_aiq_gain_interval_is_zero_for_a_tie_and_positive_for_a_clearly_better_router() -> None:
    rng = np.random.default_rng(3)
    n, m = 300, 3
    quality = (rng.random((n, m)) < [0.4, 0.6, 0.8]).astype(float)
    cost = np.tile([1.0, 3.0, 9.0], (n, 1))
    blind = (np.tile([0.4, 0.6, 0.8], (n, 1)), cost)  # knows only each expert's mean
    seeing = (quality + 0.01 * rng.random((n, m)), cost)  # knows each prompt's outcome
    assert curves.aiq_gain_interval(blind, blind, quality, cost, draws=50) == (0.0, 0.0)
    lo, hi = curves.aiq_gain_interval(seeing, blind, quality, cost, draws=50)
    assert 0.0 < lo < hi
    worse_lo, worse_hi = curves.aiq_gain_interval(blind, seeing, quality, cost, draws=50)
    assert (worse_lo, worse_hi) == pytest.approx((-hi, -lo))  # same resamples, sign flipped
