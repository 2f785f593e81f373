"""``coe train-guard``, ``coe eval guard`` and ``coe eval pii``: the signals' offline commands
(coe/signals). Heavy imports (numpy, the encoder, scikit-learn, Presidio) stay inside the commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coe.cli.common import fail, print_json
from coe.cli.eval import eval_app
from coe.cli.index import ConfigOpt, load_registry, registry_embedder

if TYPE_CHECKING:
    from coe.signals.guard.training import GuardRow

SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="validation: the rows of the documented split rule that `coe train-guard` never trains on; "
        "train; all",
    ),
]


def register(app: typer.Typer) -> None:
    app.command("train-guard")(train_guard)


def _rows(data: Path, split: str, seed: int) -> list[GuardRow]:
    from coe.errors import CoEError
    from coe.signals.guard.training import TrainSettings, read_guard_data, validation_split

    if split not in ("validation", "train", "all"):
        raise fail(f"--split must be validation, train or all, not {split!r}")
    try:
        rows = read_guard_data(data)
    except CoEError as exc:
        raise fail(exc) from None
    if split == "all":
        return rows
    train, validation = validation_split(rows, TrainSettings(seed=seed))
    return train if split == "train" else validation


def train_guard(
    data: Annotated[Path, typer.Argument(help="JSONL of {text, label: benign|jailbreak|injection, source}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Guard file to write (.npz).")] = Path("guard.npz"),
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="False-positive rate the threshold is set for.")
    ] = 0.02,
    c: Annotated[float, typer.Option("--c", help="Inverse L2 strength of the regression.")] = 0.1,
    split: SplitOpt = "train",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split rule.")] = 22,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the jailbreak / prompt-injection guard on the registry's encoder (docs/signals.md). By
    default on the train side of the split rule, so `coe eval guard DATA` measures unseen rows."""
    from coe.signals.guard.model import save
    from coe.signals.guard.training import TrainSettings, train

    if not 0 < target_fpr < 1:
        raise fail("--target-fpr must be between 0 and 1")
    rows = _rows(data, split, seed)
    embedder = registry_embedder(load_registry(config))
    settings = TrainSettings(target_fpr=target_fpr, c=c, seed=seed)
    t = time.perf_counter()
    note = f"{data.name}: split {split} (seed {seed}, coe.signals.guard.training)"
    model = train(rows, embedder, settings, note)
    save(out, model)
    h = model.header
    summary: dict[str, Any] = {
        "out": str(out),
        "rows": len(rows),
        "encoder": h.encoder,
        "threshold": round(h.threshold, 4),
        "target_fpr": h.target_fpr,
        "seconds": round(time.perf_counter() - t, 1),
        "bytes": out.stat().st_size,
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"guard written to {out} ({summary['bytes'] / 1e6:.1f} MB): {len(rows)} rows, encoder {h.encoder}, "
        f"threshold {h.threshold:.3f} for {target_fpr:.1%} false positives, {summary['seconds']} s"
    )


@eval_app.command("guard")
def eval_guard(
    data: Annotated[Path, typer.Argument(help="JSONL of {text, label, source}, as for train-guard.")],
    guard: Annotated[Path, typer.Option("--guard", help="Guard file from `coe train-guard`.")],
    split: SplitOpt = "validation",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split rule.")] = 22,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Override the guard's.")] = None,
    target_fpr: Annotated[
        float | None, typer.Option("--target-fpr", help="Threshold for this rate (calibration scores).")
    ] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """F1 (attack vs benign), recall per attack label, false-positive rate, per source."""
    import numpy as np

    from coe.signals.evaluation import guard_metrics
    from coe.signals.guard.model import load

    rows = _rows(data, split, seed)
    embedder = registry_embedder(load_registry(config))
    try:
        model = load(guard)
        model.check_encoder(embedder, guard)
    except ValueError as exc:
        raise fail(exc) from None
    thr = (
        threshold
        if threshold is not None
        else model.threshold_for(target_fpr)
        if target_fpr is not None
        else model.header.threshold
    )
    texts = [r.text for r in rows]
    t = time.perf_counter()
    scores = model.score(texts, embedder)
    per_ms = (time.perf_counter() - t) * 1000 / max(len(rows), 1)
    flagged = [bool(s > thr) for s in scores.attack]
    result: dict[str, Any] = guard_metrics([r.label for r in rows], [r.source for r in rows], flagged)
    result.update(
        split=split,
        threshold=round(thr, 4),
        encoder=model.header.encoder,
        mean_ms_per_text=round(per_ms, 2),
        label_accuracy_on_flagged=_label_accuracy(rows, scores, flagged),
        brier=round(float(np.mean((scores.attack - np.array([r.label != "benign" for r in rows])) ** 2)), 4),
    )
    if as_json:
        print_json(result)
        return
    typer.echo(
        f"{result['n']} prompts ({split}): f1 {result['f1']:.3f}, recall jailbreak "
        f"{result['recall_by_label'].get('jailbreak', float('nan')):.3f}, injection "
        f"{result['recall_by_label'].get('injection', float('nan')):.3f}, false positives "
        f"{result['false_positive_rate']:.3f} at threshold {thr:.3f}"
    )
    for source, block in result["by_source"].items():
        typer.echo(f"  {source}: " + ", ".join(f"{k} {v}" for k, v in block.items()))


def _label_accuracy(rows: list[GuardRow], scores: Any, flagged: list[bool]) -> float | None:
    """Of the attacks flagged, the share whose label (jailbreak or injection) was also right."""
    hits = [scores.label(i) == r.label for i, r in enumerate(rows) if flagged[i] and r.label != "benign"]
    return round(sum(hits) / len(hits), 4) if hits else None


PiiSplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="all; validation: the held-out 30% of the sentence templates (template_id) the recognizers' "
        "rules were not written against; train: the rest",
    ),
]


@eval_app.command("pii")
def eval_pii(
    data: Annotated[Path, typer.Argument(help="JSONL of {text, spans: [{start, end, type}], template_id}.")],
    types: Annotated[
        str | None, typer.Option("--types", help="Comma-separated types to detect (default: signals.pii's).")
    ] = None,
    min_score: Annotated[float | None, typer.Option("--min-score", help="Presidio score floor.")] = None,
    split: PiiSplitOpt = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Span F1 (exact offsets and type) of Presidio's pattern recognizers, per type and micro."""
    from pydantic import ValidationError

    from coe.config.signals import PiiConfig
    from coe.errors import CoEError
    from coe.signals.evaluation import pii_metrics
    from coe.signals.pii import find

    if split not in ("all", "train", "validation"):
        raise fail(f"--split must be all, train or validation, not {split!r}")
    try:
        cfg = PiiConfig.model_validate(
            {
                **({"types": types.split(",")} if types else {}),
                **({"min_score": min_score} if min_score is not None else {}),
            }
        )
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"]) from None
    try:
        rows = _pii_rows(data, split)
        t = time.perf_counter()
        found = [[(s.start, s.end, s.type) for s in find(text, cfg.types, cfg.min_score)] for text, _ in rows]
        per_ms = (time.perf_counter() - t) * 1000 / len(rows)
    except CoEError as exc:
        raise fail(exc) from None
    result = pii_metrics([gold for _, gold in rows], found)
    result.update(split=split, types=cfg.types, min_score=cfg.min_score, mean_ms_per_text=round(per_ms, 3))
    if as_json:
        print_json(result)
        return
    typer.echo(
        f"{result['n']} texts ({split}): f1_pattern_types {result['f1_pattern_types']:.3f}, "
        f"f1_all {result['f1_all']:.3f}"
    )
    for name, f1 in result["f1_by_type"].items():
        typer.echo(f"  {name}: {f1:.3f} {result['counts_by_type'][name]}")


def _pii_rows(path: Path, split: str = "all") -> list[tuple[str, list[tuple[int, int, str]]]]:
    """The rows of ``split`` (``coe.signals.evaluation.pii_in_validation`` by ``template_id``; a row
    without one is its own template)."""
    from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
    from coe.errors import CoEError
    from coe.signals.evaluation import pii_in_validation

    if not path.is_file():
        raise CoEError(f"{path}: no such file")
    problems: list[str] = []
    rows = []
    for n, row in jsonl_rows(path, read_utf8(path, CoEError), problems):
        text, spans = row.get("text"), row.get("spans", [])
        if not isinstance(text, str):
            problems.append(f"{path}:{n}: `text` must be a string")
            continue
        good = isinstance(spans, list) and all(
            isinstance(s, dict)
            and isinstance(s.get("start"), int)
            and isinstance(s.get("end"), int)
            and isinstance(s.get("type"), str)
            and 0 <= s["start"] < s["end"] <= len(text)
            for s in spans
        )
        if not good:
            problems.append(f"{path}:{n}: `spans` must be a list of {{start, end, type}} inside the text")
            continue
        template = str(row.get("template_id", text))
        if split != "all" and pii_in_validation(template) != (split == "validation"):
            continue
        rows.append((text, [(s["start"], s["end"], s["type"]) for s in spans]))
    raise_problems(problems, CoEError)
    if not rows:
        raise CoEError(f"{path}: no rows" + (f" in split {split!r}" if split != "all" else ""))
    return rows
