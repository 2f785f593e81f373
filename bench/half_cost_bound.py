"""How far is "the best single expert's quality at half its cost" from reach, on each outcome table?

The issue's target asks the cost router for a point with quality >= the best single expert's at
<= 50% of its cost. This bench puts our router's best quality under that budget next to what other
predictors and two upper bounds get under the same budget, on the test side of each table:

* ``knn_baseline`` and ``ours``: what ``coe eval outcomes`` fits (tuned on the train side only).
* ``logreg``: a per-expert logistic regression on the same MiniLM vectors (the learned alternative
  to neighbours; C tuned by AIQ on the train side's validation part), costs as our router predicts.
* ``ours_best_setting_in_sample``: the best of our router's tuning grid, picked on the test side
  itself: what no tuning of our model could beat.
* ``task_map_in_sample``: the best task -> expert map fitted *on the test side itself*: no category
  router, however good its classifier, can beat it.
* ``oracle``: per-prompt perfect knowledge of who answers right; no router can beat it.

If even the in-sample task map stays below the target, reaching it needs per-prompt signal that the
prompt's task does not carry; ``logreg`` and ``ours`` show how much of that MiniLM vectors give.

Run from the repository root (vectors are cached, see bench/outcome_curves.py)::

    .venv/bin/python bench/half_cost_bound.py            # table; JSON in bench/results/half_cost_bound.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
from outcome_curves import DATA, TABLES  # noqa: E402

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable

C_GRID = (0.03, 0.1, 0.3, 1.0)


def logreg_quality(fit_vectors: np.ndarray, quality: np.ndarray, vectors: np.ndarray, c: float) -> np.ndarray:
    """P(expert answers right | prompt vector), one regression per expert (a constant where the
    expert is always right or always wrong on the fitting side)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(vectors), quality.shape[1]))
    for j in range(quality.shape[1]):
        y = (quality[:, j] >= 0.5).astype(int)
        if y.min() == y.max():
            out[:, j] = y[0]
            continue
        out[:, j] = LogisticRegression(C=c, max_iter=3000).fit(fit_vectors, y).predict_proba(vectors)[:, 1]
    return out


def tune_c(train: OutcomeTable, vectors: np.ndarray) -> tuple[float, dict[str, float]]:
    """C with the best AIQ on the validation part ``coe eval outcomes`` tunes on. Costs there are
    each expert's mean: C changes only the quality estimates, so that is enough to rank it."""
    import numpy as np

    from coe.evaluation import curves
    from routers.cost import training as cost_training

    fit_part, fv, val, vv = cost_training.validation_split(train, vectors)
    cost = np.tile(fit_part.cost.mean(axis=0), (len(val), 1))
    singles = curves.single_experts(val)
    scores = {
        str(c): curves.aiq(
            curves.sweep(logreg_quality(fv, fit_part.quality, vv, c), cost, val.quality, val.cost), singles
        )
        for c in C_GRID
    }
    best = max(scores, key=lambda k: scores[k])
    return float(best), scores


def run_table(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from coe.evaluation import curves
    from coe.evaluation.outcome_inputs import embed, load_sides
    from routers.category.fit_map import Budget, fit
    from routers.cost import training as cost_training
    from routers.cost.evaluation import evaluate
    from routers.cost.model import KNNParams

    train, test, source = load_sides(name, [args.data / TABLES[name]], [], args.test_fraction)
    train_vectors, test_vectors = embed([train, test], "all-MiniLM-L6-v2", 512)
    result = evaluate(train, test, train_vectors, test_vectors, source)
    best = curves.best_single(test)
    budget = 0.5 * best.cost

    c, c_scores = tune_c(train, train_vectors)
    ours = cost_training.fit(train, train_vectors, KNNParams.model_validate(result.router.params))
    grid = cost_training.default_grid()
    found = ours.search(test_vectors, max(q.k for q in grid))  # one search serves every setting below
    predicted_cost = ours.predict(test_vectors, found).cost
    lr_points = curves.sweep(
        logreg_quality(train_vectors, train.quality, test_vectors, c), predicted_cost, test.quality, test.cost
    )
    by_setting = [
        (curves.best_within(cost_training.curve(ours.with_params(q), test, found), budget), q.model_dump())
        for q in grid
    ]
    fits = [(quality, params) for quality, params in by_setting if quality is not None]
    grid_best = max(fits, key=lambda f: f[0]) if fits else (None, None)
    oracle_points = curves.sweep(test.quality.astype(np.float64), test.cost, test.quality, test.cost)
    task_map = fit(test, Budget(kind="cost", limit=budget))
    rows = {
        "knn_baseline": {"aiq": result.baseline.aiq, "quality": result.baseline.quality_at_half_cost},
        "ours": {"aiq": result.router.aiq, "quality": result.router.quality_at_half_cost},
        "logreg": {
            "aiq": curves.aiq(lr_points, curves.single_experts(test)),
            "quality": curves.best_within(lr_points, budget),
            "C": c,
            "validation_aiq_by_C": c_scores,
        },
        "ours_best_setting_in_sample": {"aiq": None, "quality": grid_best[0], "params": grid_best[1]},
        "task_map_in_sample": {"aiq": None, "quality": task_map.expected_quality},
        "oracle": {"aiq": None, "quality": curves.best_within(oracle_points, budget)},
    }
    return {
        "test_size": len(test),
        "cost_unit": test.cost_unit,
        "best_single": best.model_dump(),
        "half_cost_budget": budget,
        "cheapest_cost": curves.cheapest_single(test).cost,
        "quality_at_half_cost": rows,
    }


def show(result: dict[str, Any]) -> None:
    def f(x: float | None) -> str:
        return "none fits" if x is None else f"{x:.4f}"

    columns = {
        "knn_baseline": "kNN baseline",
        "ours": "ours",
        "logreg": "logreg",
        "ours_best_setting_in_sample": "ours, best setting*",
        "task_map_in_sample": "task map*",
        "oracle": "oracle",
    }
    print("best quality at <= 50% of the best single expert's cost, test side (* picked on the test side)")
    print(f"{'table':12} {'best single':>11} " + " ".join(f"{c:>19}" for c in columns.values()))
    for table, r in result["tables"].items():
        q = r["quality_at_half_cost"]
        print(
            f"{table:12} {r['best_single']['quality']:11.4f} "
            + " ".join(f"{f(q[n]['quality']):>19}" for n in columns)
        )
    print("\nAIQ on the test side (the area measure; higher is better)")
    for table, r in result["tables"].items():
        q = r["quality_at_half_cost"]
        print(f"{table:12} " + " ".join(f"{n} {q[n]['aiq']:.4f}" for n in ("knn_baseline", "ours", "logreg")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "half_cost_bound.json")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    started = machine()
    result = {"tables": {name: run_table(name, args) for name in args.tables}}
    emit(result, args.out, args.json, show, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
