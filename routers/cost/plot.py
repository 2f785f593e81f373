"""The quality-versus-cost PNG of ``coe eval outcomes --plot``: our router next to every baseline.

matplotlib is imported here only (the ``plot`` extra); the Agg backend needs no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coe.evaluation import curves
from coe.evaluation.curves import CostQuality

if TYPE_CHECKING:
    from routers.cost.evaluation import OutcomeEvalResult


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _line(points: Sequence[CostQuality]) -> tuple[list[float], list[float]]:
    """The envelope drawn as what it is, linear in cost, also on a log axis (hence many vertices)."""
    import numpy as np

    env = curves.envelope(points)
    xs = np.array([p.cost for p in env])
    ys = np.array([p.quality for p in env])
    grid = np.union1d(xs, np.geomspace(max(xs[0], 1e-300), xs[-1], 200)) if xs[-1] > xs[0] else xs
    return grid.tolist(), np.interp(grid, xs, ys).tolist()


def plot_outcomes(result: OutcomeEvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    singles = result.singles
    ax.scatter([p.cost for p in singles], [p.quality for p in singles], color="0.6", s=18, zorder=3)
    for p in singles:
        ax.annotate(
            _short(p.name),
            (p.cost, p.quality),
            fontsize=7,
            color="0.4",
            xytext=(3, 2),
            textcoords="offset points",
        )
    ax.plot(
        *_line(singles),
        ":",
        color="0.5",
        label=f"zero router (mixing singles), AIQ {result.zero_router.aiq:.3f}",
    )
    for curve, colour in ((result.baseline, "tab:orange"), (result.router, "tab:blue")):
        ax.plot(
            [p.cost for p in curve.points],
            [p.quality for p in curve.points],
            ".",
            color=colour,
            ms=3,
            alpha=0.5,
        )
        ax.plot(
            *_line(curve.points),
            "-",
            color=colour,
            label=f"{curve.name.split(':')[0].split(' (')[0]}: AIQ {curve.aiq:.3f}",
        )
    best, cheap = result.best_single, result.cheapest
    markers = [
        (best, "*", 160, "tab:green", f"best single ({_short(best.name)})"),
        (cheap, "v", 70, "tab:brown", f"cheapest ({_short(cheap.name)})"),
        (result.random, "x", 70, "tab:red", "random"),
        (result.oracle, "P", 90, "tab:purple", "oracle"),
    ]
    for point, marker, size, colour, label in markers:
        ax.scatter([point.cost], [point.quality], marker=marker, s=size, color=colour, zorder=4, label=label)
    ax.axhline(best.quality, color="tab:green", lw=0.6, alpha=0.5)
    ax.axvline(0.5 * best.cost, color="tab:green", lw=0.6, ls="--", alpha=0.5)
    lo, hi = result.aiq_range
    if hi / max(lo, 1e-300) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"mean cost per prompt ({result.cost_unit})")
    ax.set_ylabel("mean quality")
    ax.set_title(f"{result.format}: {result.test_size} test prompts ({result.test_source})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
