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
    str, typer.Option("--split", help="train | validation (a deterministic 30% by pair text) | all")
]


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
    app.command("train-cache")(train_cache)


def _store(cfg: CoEConfig) -> CacheStore:
    from coe.experts.statedir import state_dir
    from coe.signals.cache.runtime import open_cache_store

    cache = cfg.signals.cache
    if cache is None:
        raise fail("this registry has no signals.cache block")
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
    """How many answers `coe serve` holds for this registry (sqlite by default, or redis)."""
    store = _store(load(config))
    stats = _run(store, store.stats)
    if as_json:
        print_json(stats)
        return
    out.print(", ".join(f"{k} {v}" for k, v in stats.items()))


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
    split: SplitOpt = "validation",
    as_json: JsonOpt = False,
) -> None:
    """Would the cache replay b's answer for a? Precision (share of hits that are paraphrases),
    recall and hits per score band, with the registry's encoder (the default one without a file)."""
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
    result = evaluate(pairs, cos, Matcher(model, min_cosine, threshold), embedder.space, str(path))
    if as_json:
        print_json(result.model_dump())
        return
    out.print(
        f"{result.n} pairs ({result.paraphrases} paraphrases): {result.hits} hits, precision "
        f"{result.precision:.3f}, recall {result.recall:.3f} at threshold {result.threshold}"
    )
    for band, b in result.by_score_band.items():
        right = f"{b.hits} hits ({b.correct_hits} right)"
        out.print(f"  score {band}: {b.n} pairs, {b.paraphrases} paraphrases, {right}")


def train_cache(
    data: PairsArg,
    out_path: Annotated[Path, typer.Option("--out", help="the verifier .npz to write")],
    config: ConfigOpt = DEFAULT_CONFIG,
    target_precision: Annotated[
        float, typer.Option("--target-precision", help="the threshold is chosen for it on the training pairs")
    ] = 0.95,
    split: SplitOpt = "train",
) -> None:
    """Fit the cache's pair verifier (logistic regression on cosine and lexical features)."""
    from coe.signals.cache.evaluation import cosines, train

    pairs = _pairs(data, split)
    embedder = _embedder(config)
    model = train(pairs, cosines(pairs, embedder.encode), embedder.space, target_precision, str(data))
    model.save(out_path)
    out.print(f"wrote {out_path}: threshold {model.threshold:.3f} ({len(pairs.labels)} {split} pairs)")
