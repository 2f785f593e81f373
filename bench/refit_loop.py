"""Does refitting the category -> expert map from production feedback help? A simulation on a real
outcome table (RouterDC's seven 7B models, ../shared/data/routerdc_7models), honest about what
production feedback can see.

1. Traffic: the table's prompts (main side), in a fixed shuffled order, routed by the default
   registry's router (its encoder and its code/math/general categories) through a hand-written map
   of the seven models: code -> dolphin-2.9-llama3-8b, math -> MetaMath-Mistral-7B, general ->
   zephyr-7b-beta (what a person picking by model card would write). With ``--explore`` E, a share E
   of requests is served by a uniformly chosen other model (exploration; E = 0 is plain production).
2. Feedback: the served model's stored score on that prompt (the table's correctness), one grade per
   request. Traces are recorded as `coe serve` records them (coe.traces.TraceRecord).
3. Refit on the early slice (``--train-fraction`` of the traffic) with coe.traces.refit (the same
   solver as `coe fit-map`, at each ``--confidence-z``), then on the later slice compare the starting
   and refit maps by the table's scores for every model (the true counterfactual, which production
   never sees), next to what `coe replay` predicts: from the early slice's feedback (the grades the
   refit was fitted on) and from the later slice's own feedback (held out from the refit).
   Two starting maps: the hand-written one above, and one model (base Mistral-7B) for everything.

    .venv/bin/python bench/refit_loop.py --json
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import emit, machine  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "routerdc_7models"
ALIASES = {
    "mistralai/Mistral-7B-v0.1": "mistral",
    "meta-math/MetaMath-Mistral-7B": "metamath",
    "itpossible/Chinese-Mistral-7B-v0.1": "chinese_mistral",
    "HuggingFaceH4/zephyr-7b-beta": "zephyr",
    "cognitivecomputations/dolphin-2.6-mistral-7b": "dolphin26",
    "meta-llama/Meta-Llama-3-8B": "llama3",
    "cognitivecomputations/dolphin-2.9-llama3-8b": "dolphin29",
}
HAND = {"code": "dolphin29", "math": "metamath", "general": "zephyr"}
# Two starting maps: a sensible hand-written one, and one model for everything (the base Mistral-7B),
# which leaves a refit something to find.
STARTS = {"hand": HAND, "single": dict.fromkeys(HAND, "mistral")}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--explore", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument("--train-fraction", type=float, default=0.5)
    p.add_argument("--min-feedback", type=int, default=20)
    p.add_argument("--confidence-z", type=float, nargs="+", default=[0.0, 1.645, 3.0])
    p.add_argument("--no-replay", dest="replay", action="store_false", help="skip the replay predictions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "refit_loop.json")
    return p.parse_args()


def registry(folder: Path, mapping: dict[str, str], name: str) -> Path:
    """The default registry's embedder and router, with the seven models as experts (never called)."""
    import yaml

    base = yaml.safe_load((REPO / "experts.yaml").read_text())
    base["experts"] = {
        alias: {"endpoint": "http://127.0.0.1:9/v1", "model": model, "params_b": 7.0}
        for model, alias in ALIASES.items()
    }
    for cat, expert in mapping.items():
        base["router"]["categories"][cat]["expert"] = expert
    base["router"]["fallback"]["expert"] = mapping["general"]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def main(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from coe import CoE, load_config
    from coe.encoding.embedder import request_scope
    from coe.evaluation.outcomes import load_outcomes
    from coe.traces import Feedback, TraceDecision, TraceRecord
    from coe.traces.refit import refit
    from coe.traces.replay import replay
    from coe.types import Request

    table = load_outcomes("routerdc", sorted(DATA.glob("*.jsonl")))
    col = {ALIASES[m]: j for j, m in enumerate(table.models)}
    order = list(range(len(table)))
    random.Random(args.seed).shuffle(order)
    cut = int(len(order) * args.train_fraction)
    with tempfile.TemporaryDirectory(prefix="coe-refit-loop-") as tmp:
        hand_path = registry(Path(tmp), HAND, "hand")
        hand = CoE(load_config(hand_path))
        t = time.perf_counter()
        decisions = hand.decide([Request.from_input(table.prompts[i]) for i in order])
        route_s = time.perf_counter() - t
        hand.close()
        late_idx = order[cut:]

        def quality_of(mapping: dict[str, str]) -> float:
            """The later slice's mean stored score under a map: the counterfactual production never sees."""
            late = zip(late_idx, decisions[cut:], strict=True)
            return float(np.mean([table.quality[i, col[_pick(d, mapping)]] for i, d in late]))

        oracle = _oracle_map(table, order[:cut], decisions[:cut], col)
        runs = []
        scope = request_scope()  # the replays route the same prompts: encode each batch once
        scope.__enter__()
        for start_name, start_map in STARTS.items():
            for explore in args.explore:
                rng = random.Random(args.seed + 1)
                records, feedback = [], []
                for k, (i, d) in enumerate(zip(order, decisions, strict=True)):
                    served = _pick(d, start_map)
                    if explore and rng.random() < explore:
                        served = rng.choice([a for a in col if a != served])
                    rid = f"chatcmpl-{k}"
                    records.append(
                        TraceRecord(
                            id=rid, time=1e9 + k, expert=served, prompt_sha256=str(i),
                            decision=TraceDecision(router="category", category=_effective(d)),
                            prompt=[{"role": "user", "content": table.prompts[i]}],
                            prompt_tokens=100, completion_tokens=100,
                        )
                    )  # fmt: skip
                    feedback.append(Feedback(id=rid, score=float(table.quality[i, col[served]])))
                early, late = records[:cut], records[cut:]
                for z in args.confidence_z:
                    fitted = refit(early, feedback[:cut], min_feedback=args.min_feedback, confidence_z=z)
                    refit_map = {**start_map, **{c: m.expert for c, m in fitted.categories.items()}}
                    run: dict[str, Any] = {
                        "start": start_name,
                        "explore": explore,
                        "confidence_z": z,
                        "refit_map": refit_map,
                        "changed": fitted.changed,
                        "later_slice_quality_start": round(quality_of(start_map), 4),
                        "later_slice_quality_refit": round(quality_of(refit_map), 4),
                        "later_slice_quality_oracle_map": round(quality_of(oracle), 4),
                    }
                    run["refit_minus_start"] = round(
                        run["later_slice_quality_refit"] - run["later_slice_quality_start"], 4
                    )
                    # replay compares with the traffic as it was served, exploration included
                    served_q = float(np.mean([f.score for f in feedback[cut:]]))
                    run["later_slice_quality_as_served"] = round(served_q, 4)
                    run["refit_minus_as_served"] = round(run["later_slice_quality_refit"] - served_q, 4)
                    if args.replay and fitted.changed:
                        # what `coe replay` predicts from the early slice's feedback for the later traffic
                        cand = CoE(load_config(registry(Path(tmp), refit_map, f"refit-{len(runs)}")))
                        served_start = [
                            r.model_copy(update={"expert": _pick(d, start_map)})
                            for r, d in zip(late, decisions[cut:], strict=True)
                        ]
                        predicted = replay(served_start, feedback[:cut], cand, draws=500, history=early)
                        # the same question asked with feedback the refit never saw: the later
                        # slice as it was served (exploration included) and its own grades
                        heldout = replay(late, feedback[cut:], cand, draws=500)
                        cand.close()
                        run["replay_predicted_change"] = predicted.quality.change
                        run["replay_interval"] = predicted.quality.interval
                        run["replay_moved"] = predicted.moved
                        run["replay_heldout_change"] = heldout.quality.change
                        run["replay_heldout_interval"] = heldout.quality.interval
                    elif args.replay:
                        run["replay_predicted_change"], run["replay_moved"] = 0.0, 0
                        run["replay_heldout_change"] = 0.0
                    runs.append(run)
        scope.__exit__(None, None, None)
    return {
        "table": "routerdc_7models (main side)",
        "prompts": len(table),
        "train": cut,
        "test": len(table) - cut,
        "starts": STARTS,
        "oracle_map": oracle,
        "min_feedback": args.min_feedback,
        "route_s": round(route_s, 1),
        "runs": runs,
    }


def _effective(decision: Any) -> str:
    """The category whose expert serves a decision: its own, or general (the fallback's) when unsure."""
    return "general" if decision.fallback or decision.category is None else str(decision.category)


def _pick(decision: Any, mapping: dict[str, str]) -> str:
    return mapping[_effective(decision)]


def _oracle_map(table: Any, idx: list[int], decisions: list[Any], col: dict[str, int]) -> dict[str, str]:
    """The best map on the early slice with every model's scores (what a full evaluation would fit)."""
    import numpy as np

    out = {}
    for cat in HAND:
        rows = [i for i, d in zip(idx, decisions, strict=True) if _effective(d) == cat]
        means = {a: float(np.mean(table.quality[rows, j])) for a, j in col.items()} if rows else {}
        out[cat] = max(means, key=lambda a: means[a]) if means else HAND[cat]
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"


def show(result: dict[str, Any]) -> None:
    print(f"{result['prompts']} prompts, refit on {result['train']}, judged on {result['test']}")
    print(
        f"{'start':>7} {'explore':>7} {'z':>6} {'start q':>8} {'refit q':>8} {'oracle':>7} "
        f"{'served':>7} {'true':>8} {'held-out [95%]':>26} {'in-sample':>9}  changed"
    )
    for r in result["runs"]:
        pred = r.get("replay_predicted_change")
        print(
            f"{r['start']:>7} {r['explore']:>7} {r['confidence_z']:>6} "
            f"{r['later_slice_quality_start']:>8.4f} "
            f"{r['later_slice_quality_refit']:>8.4f} {r['later_slice_quality_oracle_map']:>7.4f} "
            f"{r['later_slice_quality_as_served']:>7.4f} {r['refit_minus_as_served']:>+8.4f} "
            f"{_num(r.get('replay_heldout_change')) + _ci(r.get('replay_heldout_interval')):>26} "
            f"{_num(pred):>9}  {', '.join(r['changed']) or '-'}"
        )


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    args = parse_args()
    started = machine()
    emit(main(args), args.out, args.json, show, started)
