"""``coe cache stats|clear``, ``coe eval cache`` and ``coe train-cache``: the semantic response cache
(coe.signals.cache) of a registry, and its pair matcher measured and fitted on labelled pairs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, JsonOpt, fail, load, out, print_json
from coe.cli.eval import eval_app

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.signals.cache.store import CacheStore

cache_app = typer.Typer(help="The semantic response cache: stats, clear.", no_args_is_help=True)
PairsArg = Annotated[Path, typer.Argument(help="JSONL pairs: a, b, label (1: may share an answer), score")]
SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="all | train | validation (a deterministic 30% of the file's sentence groups, for scoring "
        "inside the training file)",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
    app.command("train-cache")(train_cache)


def _store(cfg: CoEConfig) -> CacheStore:
    from coe.experts.statedir import state_dir
    from coe.signals.cache.runtime import open_cache_store

    cache = cfg.signals.cache
    if cache is None:
        raise fail(
            "this registry has no cache: add a signals.cache block, e.g. `signals: {cache: {store: sqlite}}` "
            "(docs/signals.md)"
        )
    if (cache.store or "sqlite") == "memory":
        raise fail("the cache is kept in memory by its process: only a sqlite or redis store can be read")
    return open_cache_store(cache, cfg, "sqlite", state_dir(cfg))


def _run(store: CacheStore, make: Any) -> Any:
    from coe.signals.cache.store import StoreUnavailable

    async def go() -> Any:
        try:
            return await make()
        finally:
            await store.aclose()

    try:
        return asyncio.run(go())
    except StoreUnavailable as exc:
        raise fail(exc) from None


@cache_app.command("stats")
def cache_stats(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """How many answers `coe serve` holds for this registry (sqlite by default, or redis), and the
    pair verifier it matches with: its threshold and the out-of-fold numbers recorded when fitted."""
    cfg = load(config)
    store = _store(cfg)
    stats = _run(store, store.stats)
    stats["verifier"] = _verifier_summary(cfg)
    if as_json:
        print_json(stats)
        return
    out.print(", ".join(f"{k} {v}" for k, v in stats.items() if k != "verifier"))
    out.print(_recorded_line(stats["verifier"]))


def _verifier_summary(cfg: CoEConfig) -> dict[str, Any]:
    from coe.signals.cache.matcher import SHIPPED, Verifier

    cache = cfg.signals.cache
    path = cfg.resolve_path(cache.verifier) if cache is not None and cache.verifier else SHIPPED
    try:
        model = Verifier.load(path)
    except (ValueError, OSError, KeyError) as exc:
        return {"path": str(path), "error": str(exc)}
    configured = cache.threshold if cache is not None else None
    return {
        "path": str(path),
        "encoder": model.encoder,
        "threshold": configured if configured is not None else model.threshold,
        "recorded": model.out_of_fold,
    }


def _recorded_line(summary: dict[str, Any]) -> str:
    if "error" in summary:
        return f"verifier {summary['path']}: {summary['error']}"
    rec = summary.get("recorded")
    head = f"verifier {summary['path']}: threshold {summary['threshold']:.3f}"
    if not rec:
        return head + "; no out-of-fold numbers recorded (fitted before coe train-cache recorded them)"
    lo, hi = rec["precision_ci95"]
    precision = f"{rec['precision']:.3f} [{lo:.3f}, {hi:.3f}]" if rec["precision"] is not None else "none"
    return (
        f"{head}; recorded out of fold at {rec['threshold']:.3f} ({rec['folds']} grouped folds, "
        f"{rec['pairs']} pairs): precision {precision}, recall {rec['recall']:.3f}, "
        f"{rec['wrong_hits']} wrong of {rec['hits']} hits" + (f"; {rec['note']}" if rec.get("note") else "")
    )


@cache_app.command("clear")
def cache_clear(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Forget every cached answer (a running server keeps answering, uncached until new answers)."""
    store = _store(load(config))
    n = _run(store, store.clear)
    out.print(f"cleared {n} cached answers")


def _embedder(config: Path) -> Any:
    from coe.encoding.embedder import Embedder

    cfg = load(config) if config.exists() else None
    if cfg is None:
        from coe.config import EmbedderConfig

        return Embedder.from_config(EmbedderConfig(backend="onnx-int8"))
    return Embedder.from_config(cfg.embedder, cfg.base_dir)


def _pairs(data: Path, split: str) -> Any:
    from coe.signals.cache.evaluation import PairsError, read_pairs

    if split not in ("train", "validation", "all"):
        raise fail(f"--split must be train, validation or all, not {split!r}")
    try:
        return read_pairs(data, split)  # type: ignore[arg-type]
    except PairsError as exc:
        raise fail(exc) from None


@eval_app.command("cache")
def eval_cache(
    data: PairsArg,
    config: ConfigOpt = DEFAULT_CONFIG,
    verifier: Annotated[
        Path | None, typer.Option("--verifier", help="from `coe train-cache` (default: the shipped one)")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="verifier probability a hit needs (default: its own)")
    ] = None,
    min_cosine: Annotated[float, typer.Option("--min-cosine", help="as signals.cache.min_cosine")] = 0.8,
    split: SplitOpt = "all",
    as_json: JsonOpt = False,
) -> None:
    """Would the cache replay b's answer for a? Precision (share of hits that are paraphrases) with its
    95% interval, wrong hits, recall, hits per score band and the guard's refusals, with the
    registry's encoder (the default one without a file), beside the verifier's recorded numbers."""
    from coe.errors import CoEError
    from coe.signals.cache.evaluation import cosines, evaluate
    from coe.signals.cache.matcher import SHIPPED, Matcher, Verifier

    path = verifier or SHIPPED
    try:
        model = Verifier.load(path)
    except (ValueError, OSError) as exc:
        raise fail(exc) from None
    pairs = _pairs(data, split)
    embedder = _embedder(config)
    if model.encoder != embedder.space:
        raise fail(f"{path}: fitted on {model.encoder!r} cosines, but the encoder is {embedder.space!r}")
    try:
        cos = cosines(pairs, embedder.encode)
    except CoEError as exc:
        raise fail(exc) from None
    result = evaluate(pairs, cos, Matcher(model, min_cosine, threshold), embedder.space, str(path), split)
    if as_json:
        print_json(result.model_dump())
        return
    lo, hi = result.precision_ci95
    out.print(
        f"{result.n} pairs ({split}; {result.paraphrases} paraphrases): {result.hits} hits, "
        f"{result.wrong_hits} wrong; precision {result.precision:.3f} [95%: {lo:.3f}, {hi:.3f}], "
        f"recall {result.recall:.3f} at threshold {result.threshold or 0:.3f}"
    )
    refused = ", ".join(
        f"{k} {r.pairs} ({r.paraphrases} paraphrases)" for k, r in result.refused.items() if r.pairs
    )
    out.print(f"  refused by the guard after the verifier accepted: {refused or 'none'}")
    for band, b in result.by_score_band.items():
        right = f"{b.hits} hits ({b.correct_hits} right)"
        out.print(f"  score {band}: {b.n} pairs, {b.paraphrases} paraphrases, {right}")
    recorded = {"path": str(path), "threshold": result.threshold, "recorded": result.recorded}
    out.print("  " + _recorded_line(recorded))


def train_cache(
    data: PairsArg,
    out_path: Annotated[Path, typer.Option("--out", help="the verifier .npz to write")],
    config: ConfigOpt = DEFAULT_CONFIG,
    target_precision: Annotated[
        float,
        typer.Option(
            "--target-precision",
            help="the threshold is the lowest whose out-of-fold precision (grouped 5-fold) reaches it",
        ),
    ] = 0.98,
    min_cosine: Annotated[
        float, typer.Option("--min-cosine", help="the cosine floor it is chosen under (as signals.cache's)")
    ] = 0.8,
    split: SplitOpt = "all",
) -> None:
    """Fit the cache's pair verifier (logistic regression on cosine and lexical features); its threshold
    and the precision (95% interval), recall and wrong hits it gives are from grouped cross-validation."""
    from coe.signals.cache.evaluation import PairsError, cosines, train

    if not 0 < target_precision < 1:
        raise fail("--target-precision must be between 0 and 1")
    pairs = _pairs(data, split)
    embedder = _embedder(config)
    source = {"source": f"{data.parent.name}/{data.name}", "split": split}
    try:
        cos = cosines(pairs, embedder.encode)
        model = train(pairs, cos, embedder.space, target_precision, source, min_cosine)
    except PairsError as exc:
        raise fail(exc) from None
    model.save(out_path)
    out.print(f"wrote {out_path} ({len(pairs.labels)} {split} pairs)")
    recorded = {"path": str(out_path), "threshold": model.threshold, "recorded": model.out_of_fold}
    out.print(_recorded_line(recorded))
