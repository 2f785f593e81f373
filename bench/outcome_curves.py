"""Cost router and fitted category maps on the three outcome tables of ../shared/data.

For each table (RouterBench, RouterDC, RouteLLM) this runs what ``coe eval outcomes`` runs (tune on a
validation part of the train side, sweep λ on the test side; test = a deterministic 25% of the files
keyed on the prompt text unless --test-root names held-out copies of the folders) and what
``coe fit-map`` runs (exact category -> expert maps under budgets of 25%, 50% and 100% of the best
single expert's cost, fitted on the train side and scored on the test side).

Run from the repository root::

    .venv/bin/python bench/outcome_curves.py                   # table on stdout
    .venv/bin/python bench/outcome_curves.py --plots bench/results   # and one PNG per table

Results go to bench/results/outcome_curves.json. Prompt embeddings are cached on disk
(``~/.cache/coe/embeddings``), so only the first run pays for encoding (many minutes on 2 cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)

DATA = REPO.parent / "shared" / "data"
TABLES = {"routerbench": "routerbench", "routerdc": "routerdc_7models", "routellm": "routellm_outcomes"}
BUDGET_SHARES = (0.25, 0.5, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Outcome-table curves: cost router vs baselines, fitted maps.")
    p.add_argument("--data", type=Path, default=DATA, help="folder holding the outcome folders")
    p.add_argument("--test-root", type=Path, help="folder with held-out copies of the outcome folders")
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--plots", type=Path, help="write <table>.png here")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "outcome_curves.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def run_table(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from coe.evaluation import curves
    from coe.evaluation.outcome_inputs import embed, load_sides
    from routers.category.fit_map import Budget, fit
    from routers.cost.evaluation import evaluate

    folder = args.data / TABLES[name]
    test = [args.test_root / TABLES[name]] if args.test_root else []
    train, held, source = load_sides(name, [folder], test, args.test_fraction)
    t0 = time.perf_counter()
    train_vectors, test_vectors = embed([train, held], "all-MiniLM-L6-v2", 512)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(train, held, train_vectors, test_vectors, source)
    eval_s = time.perf_counter() - t0
    best_train = curves.best_single(train)
    maps = []
    for share in BUDGET_SHARES:
        budget = Budget(kind="cost", limit=share * best_train.cost)
        report = fit(train, budget, None, held)
        maps.append(
            {
                "budget_share_of_best_single": share,
                "budget": budget.limit,
                "feasible": report.feasible,
                "train_quality": report.expected_quality,
                "train_average_cost": report.average_cost,
                "test_quality": report.test.quality if report.test else None,
                "test_average_cost": report.test.average_cost if report.test else None,
                "map": {c: m.expert for c, m in report.categories.items()},
            }
        )
    if args.plots:
        from routers.cost.plot import plot_outcomes

        plot_outcomes(result, args.plots / f"{name}.png")
    return {
        "eval": result.model_dump(mode="json"),
        "fit_map": maps,
        "seconds": {"embed": round(embed_s, 1), "tune_and_sweep": round(eval_s, 1)},
    }


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'table':12} {'best single (quality @ cost)':48} {'oracle':>8} {'random':>8} "
        f"{'kNN AIQ':>8} {'our AIQ':>8} {'gain 95% CI':>17} {'APGR':>7} {'reach':>7}"
    )
    for name, r in results.items():
        e = r["eval"]
        b = e["best_single"]
        reach = e["reach_best_single"]
        lo, hi = e["aiq_gain_ci95"]
        single = f"{b['name'].rsplit('/', 1)[-1]} {b['quality']:.4f} @ {b['cost']:.4g}"
        print(
            f"{name:12} {single:48} {e['oracle']['quality']:8.4f} {e['random']['quality']:8.4f} "
            f"{e['baseline']['aiq']:8.4f} {e['aiq']:8.4f} {lo:+.4f}..{hi:+.4f} {_fmt(e['apgr'], '7.3f')} "
            f"{_fmt(reach['cost_ratio'] if reach else None, '7.1%')}"
        )
    print("\nfitted category maps (fit on train, scored on test); budget = share of best single's cost")
    for name, r in results.items():
        for m in r["fit_map"]:
            share = m["budget_share_of_best_single"]
            print(
                f"  {name:12} {share:4.0%}: test quality {_fmt(m['test_quality'])} "
                f"at {_fmt(m['test_average_cost'], '.4g')} (train {_fmt(m['train_quality'])})"
                + ("" if m["feasible"] else "  infeasible")
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = machine()
    results = {name: run_table(name, args) for name in args.tables}
    emit({"tables": results}, args.out, args.json, lambda out: print_table(out["tables"]), started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
