"""``coe eval recruit``: skill-based recruitment replayed on stored outcomes, without any LLM call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coe.cli.common import fail
from coe.cli.eval import eval_app

if TYPE_CHECKING:
    from routers.skills.evaluation import RecruitEval

FilesOpt = Annotated[list[Path], typer.Option(help="outcome file; repeat the flag for several")]


def register(app: typer.Typer) -> None:
    """``recruit`` hangs off ``coe eval``, which coe.cli.eval registers."""


def _parse_k(value: str) -> int | str:
    if value == "dynamic":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise typer.BadParameter(f"expected a positive number or 'dynamic', got {value!r}", param_hint="--k")


@eval_app.command("recruit")
def eval_recruit(
    train: FilesOpt,
    test: FilesOpt,
    fmt: Annotated[str, typer.Option("--format", help="outcome table format")] = "routerbench",
    k: Annotated[str, typer.Option("--k", help="experts per prompt: a number, or dynamic")] = "dynamic",
    aggregator: Annotated[str, typer.Option("--aggregator", help="how answers combine (vote)")] = "vote",
    top_p: Annotated[
        float, typer.Option("--top-p", min=0.01, max=1.0, help="dynamic k: weight to reach")
    ] = 0.5,
    min_k: Annotated[int, typer.Option("--min-k", min=1)] = 1,
    max_k: Annotated[int, typer.Option("--max-k", min=1)] = 3,
    keywords: Annotated[int, typer.Option("--keywords", min=1, help="nearest vocabulary keywords")] = 3,
    sampling: Annotated[bool, typer.Option("--sampling", help="draw k with replacement (the paper)")] = False,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", min=0.01, max=0.99, help="share held out of files on both sides"),
    ] = 0.25,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Build skill profiles from --train outcomes, recruit models for each --test prompt, vote on
    their stored answers. A file given to both --train and --test is split by a hash of each prompt."""
    from coe.errors import CoEError

    k_value = _parse_k(k)
    if aggregator != "vote":
        raise fail("--aggregator: only 'vote' replays offline (synthesis needs an LLM call)")
    if min_k > max_k:
        raise fail(f"--min-k ({min_k}) must not exceed --max-k ({max_k})")
    try:
        result = _run(fmt, train, test, k_value, top_p, min_k, max_k, keywords, sampling, test_fraction)
    except CoEError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    typer.echo(
        f"{result.n_test} test prompts (profiles from {result.n_train}): accuracy {result.accuracy:.4f} "
        f"with {result.mean_k:.2f} models per prompt; best single {result.best_single.name} "
        f"{result.best_single.accuracy:.4f}; oracle {result.oracle.accuracy:.4f}"
    )
    for task, r in result.per_task.items():
        typer.echo(
            f"  {task}: accuracy {r.accuracy:.4f}, k {r.mean_k:.2f}, best single {r.best_single.accuracy:.4f}"
        )


def _run(
    fmt: str,
    train: list[Path],
    test: list[Path],
    k: int | str,
    top_p: float,
    min_k: int,
    max_k: int,
    keywords: int,
    sampling: bool,
    test_fraction: float,
) -> RecruitEval:
    from coe.config import EmbedderConfig
    from coe.encoding.cache import EmbeddingCache
    from coe.encoding.embedder import shared_embedder
    from coe.evaluation.outcomes import split_sides
    from routers.skills.evaluation import evaluate

    train_table, test_table = split_sides(fmt, train, test, test_fraction)
    cache = EmbeddingCache(shared_embedder(EmbedderConfig(threads=1)))
    return evaluate(
        train_table,
        test_table,
        cache.encode,
        k,  # type: ignore[arg-type]
        top_p=top_p,
        min_k=min_k,
        max_k=max_k,
        keywords=keywords,
        sampling=sampling,
    )
