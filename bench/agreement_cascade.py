"""How cheaply can RouterBench's best single model be matched? An agreement cascade as a yardstick.

The issue's target for the cost router is "the best single expert's quality at <= 50% of its cost".
A router sees only the prompt. This bench asks what a stronger, answer-aware policy reaches on the
same table, as a bound on what prompt-only routing can hope for: FrugalGPT-style, 2 or 3 cheap models
answer first; when at least ``need`` of them give the same option letter, that answer is kept (its
correctness is the agreeing model's own, from the table); otherwise the prompt goes to the best
single model. Its cost counts every call made. MBPP answers are code, with no letter to compare, so
MBPP prompts always go to the best single model.

Every combination of cheap models and agreement level is scored on the train side of the same split
``coe eval outcomes`` uses (a deterministic 25% of prompts held out, keyed on the text); the
configuration is chosen there (the cheapest that matches the best single model's train quality, else
the most accurate) and reported on the test side.

    .venv/bin/python bench/agreement_cascade.py            # table; JSON to bench/results/
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from _report import emit, machine  # bench/ is on sys.path when a bench runs as a script

from coe.evaluation.curves import best_single, single_experts
from coe.evaluation.outcomes import OutcomeTable, split_sides

REPO = Path(__file__).resolve().parent.parent
LETTER = re.compile(r"\s*\(?([A-E])\b")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "routerbench")
    p.add_argument("--expensive-share", type=float, default=0.5, help="models costing more than this "
                   "share of the best single model's cost are never asked first")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "agreement_cascade.json")
    return p.parse_args()


def letters(table: OutcomeTable) -> list[dict[str, str | None]]:
    assert table.responses is not None, "RouterBench tables carry the models' responses"
    out = []
    for task, answers in zip(table.tasks, table.responses, strict=True):
        found = {m: (m_.group(1) if (m_ := LETTER.match(a)) else None) for m, a in answers.items()}
        out.append(found if task != "mbpp" else dict.fromkeys(answers))
    return out


def cascade(table: OutcomeTable, answers: list[dict[str, str | None]], first: tuple[str, ...],
            need: int, best: str) -> tuple[float, float]:  # fmt: skip
    """Mean quality and mean cost of asking ``first``, then ``best`` when fewer than ``need`` agree."""
    col = {m: i for i, m in enumerate(table.models)}
    quality = cost = 0.0
    for row, said in enumerate(answers):
        cost += sum(float(table.cost[row, col[m]]) for m in first)
        votes = Counter(said[m] for m in first if said[m])
        if votes and (top := votes.most_common(1)[0])[1] >= need:
            agreeing = next(m for m in first if said[m] == top[0])
            quality += float(table.quality[row, col[agreeing]])
        else:
            quality += float(table.quality[row, col[best]])
            cost += float(table.cost[row, col[best]])
    return quality / len(answers), cost / len(answers)


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = sorted(args.data.glob("*.jsonl"))
    train, test = split_sides("routerbench", files, [])
    best = best_single(train)
    cheap = [p.name for p in single_experts(train) if p.cost <= args.expensive_share * best.cost]
    answers = {"train": letters(train), "test": letters(test)}
    configs = []
    for k in (2, 3):
        for first in itertools.combinations(cheap, k):
            for need in range(2, k + 1):
                q, c = cascade(train, answers["train"], first, need, best.name)
                configs.append({"first": list(first), "need": need, "train_quality": q, "train_cost": c})
    matching = [c for c in configs if c["train_quality"] >= best.quality]
    chosen = (
        min(matching, key=lambda c: c["train_cost"])
        if matching
        else max(configs, key=lambda c: c["train_quality"])
    )
    test_q, test_c = cascade(test, answers["test"], tuple(chosen["first"]), chosen["need"], best.name)
    on_test = next(p for p in single_experts(test) if p.name == best.name)
    top = sorted(configs, key=lambda c: -c["train_quality"])[:5]
    return {
        "best_single": {
            "name": best.name,
            "train_quality": best.quality,
            "test_quality": on_test.quality,
            "train_cost": best.cost,
            "test_cost": on_test.cost,
        },
        "configs_tried": len(configs),
        "configs_matching_best_single_on_train": len(matching),
        "chosen": {
            **chosen,
            "test_quality": test_q,
            "test_cost": test_c,
            "test_cost_share": test_c / on_test.cost,
        },
        "top_by_train_quality": [{**c, "train_cost_share": c["train_cost"] / best.cost} for c in top],
        "train_prompts": len(train),
        "test_prompts": len(test),
    }


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    b = result["best_single"]
    print(f"best single: {b['name']}, quality {b['train_quality']:.4f} train / {b['test_quality']:.4f} test")
    print(f"{result['configs_tried']} cascades tried; "
          f"{result['configs_matching_best_single_on_train']} match it on the train side")  # fmt: skip
    table = Table(
        "asked first", "agree", "train quality", "train cost share", title="best cascades (train side)"
    )
    for c in result["top_by_train_quality"]:
        names = ", ".join(m.split("/")[-1] for m in c["first"])
        table.add_row(names, str(c["need"]), f"{c['train_quality']:.4f}", f"{c['train_cost_share']:.2f}")
    Console().print(table)
    c = result["chosen"]
    print(f"chosen on train, on the test side: quality {c['test_quality']:.4f} at {c['test_cost_share']:.2f} "
          "of the best single model's cost")  # fmt: skip


if __name__ == "__main__":
    a = parse_args()
    if not a.data.is_dir():
        sys.exit(f"error {a.data} not found; pass --data")
    started = machine()
    emit(run(a), a.out, a.json, show, started)
