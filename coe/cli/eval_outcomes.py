"""``coe eval outcomes``: the cost router's quality-versus-cost curve on an outcome table, next to
random, best single, cheapest, the RouterBench kNN router and the oracle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from coe.cli.common import fail
from coe.cli.eval import eval_app
from coe.cli.router_tools import EncoderOpt

_GREEDY = ("--train", "--test")

# Options shared by the outcome commands (eval outcomes, fit-map, train-cost-router).
FormatOpt = Annotated[str, typer.Option("--format", help="routerbench | routerdc | routellm | coe")]
MaxCharsOpt = Annotated[int, typer.Option("--max-chars", help="characters of a prompt encoded (0: all)")]
TestFractionOpt = Annotated[
    float,
    typer.Option("--test-fraction", help="share held out of files on both sides, or of all without --test"),
]


class GreedyFileOptions(TyperCommand):
    """Lets ``--train a.jsonl b.jsonl --test c.jsonl`` (what a shell glob produces) mean what it says:
    bare words after ``--train``/``--test`` belong to that option, as if the flag were repeated."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rewritten: list[str] = []
        current: str | None = None
        taken = False
        for token in args:
            flag = token.split("=", 1)[0]
            if flag in _GREEDY:
                current, taken = flag, "=" in token
                rewritten.append(token)
            elif token.startswith("-"):
                current = None
                rewritten.append(token)
            elif current is not None and taken:
                rewritten.extend([current, token])
            else:
                taken = current is not None
                rewritten.append(token)
        return super().parse_args(ctx, rewritten)


def register(app: typer.Typer) -> None:
    del app  # the command lives in the `eval` group, which coe.cli.eval adds to the app
    eval_app.command("outcomes", cls=GreedyFileOptions)(eval_outcomes)


def eval_outcomes(
    fmt: FormatOpt,
    train: Annotated[list[Path], typer.Option("--train", help="outcome files (or folders) to learn from")],
    test: Annotated[
        list[Path] | None,
        typer.Option("--test", help="outcome files to report on; default: hold part of --train out"),
    ] = None,
    test_fraction: TestFractionOpt = 0.25,
    encoder: EncoderOpt = "all-MiniLM-L6-v2",
    max_chars: MaxCharsOpt = 512,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the quality-vs-cost PNG here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Tune on --train (a validation part of it), sweep λ on the test side, compare with baselines."""
    from coe.errors import CoEError
    from coe.evaluation.outcome_inputs import embed, load_sides
    from routers.cost.evaluation import evaluate

    try:
        train_table, test_table, source = load_sides(fmt, train, test or [], test_fraction)
        train_vectors, test_vectors = embed([train_table, test_table], encoder, max_chars or None)
        result = evaluate(train_table, test_table, train_vectors, test_vectors, source)
    except (CoEError, ValueError) as exc:
        raise fail(str(exc)) from None
    if plot is not None:
        from routers.cost.plot import plot_outcomes

        plot_outcomes(result, plot)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    _print_table(result)


def _print_table(result: Any) -> None:
    best = result.best_single
    typer.echo(
        f"{result.format}: train {result.train_size}, test {result.test_size} ({result.test_source}); "
        f"cost unit {result.cost_unit}"
    )
    typer.echo(f"  best single  {best.name}: quality {best.quality:.4f} at {best.cost:.4g}")
    cheap = result.cheapest
    typer.echo(f"  cheapest     {cheap.name}: quality {cheap.quality:.4f} at {cheap.cost:.4g}")
    typer.echo(f"  random       quality {result.random.quality:.4f} at {result.random.cost:.4g}")
    typer.echo(f"  oracle       quality {result.oracle.quality:.4f} at {result.oracle.cost:.4g}")
    typer.echo(f"  zero router  AIQ {result.zero_router.aiq:.4f}")
    for curve in (result.baseline, result.router):
        reach = curve.reach_best_single
        where = (
            f"best-single quality reached at {reach.cost_ratio:.0%} of its cost (λ={reach.knob:.4g})"
            if reach
            else "best-single quality never reached"
        )
        apgr = f"{curve.apgr:.4f}" if curve.apgr is not None else "n/a"
        half = curve.quality_at_half_cost
        at_half = (
            f"quality {half:.4f} at half its cost" if half is not None else "no point costs half as much"
        )
        typer.echo(f"  {curve.name}\n      AIQ {curve.aiq:.4f}, APGR {apgr}, {where}; {at_half}")
    lo, hi = result.aiq_gain_ci95
    typer.echo(
        f"  AIQ gain over the RouterBench kNN: {result.router.aiq - result.baseline.aiq:+.4f} "
        f"(95% paired-bootstrap interval {lo:+.4f} .. {hi:+.4f})"
    )
    if result.apgr_warning:
        typer.echo(f"  note on APGR: {result.apgr_warning}")
    typer.echo(
        "  half-cost target (best-single quality at <= 50% of its cost): "
        + ("met" if result.half_cost_target_met else "not met")
    )
