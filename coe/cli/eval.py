"""``coe eval router``: accuracy, macro-F1, fallback rate and latency of a trained router artefact.

``eval_app`` is the ``coe eval`` group; other modules register their own subcommands on it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from coe.cli.common import fail
from coe.cli.router_tools import DataArg, LabelField, ModelOpt, TextField
from coe.config.schema import ENCODER_THREADS

eval_app = typer.Typer(help="Measure routers on labelled data.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("router")
def eval_router(
    data: DataArg,
    model: ModelOpt,
    text_field: TextField = "text",
    label_field: LabelField = "domain",
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="fallback threshold")] = 0.0,
    latency_prompts: Annotated[int, typer.Option("--latency-prompts", help="prompts timed one by one")] = 200,
    backend: Annotated[
        str | None, typer.Option("--backend", help="encoder backend (default: the one trained with)")
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            "--threads", min=0, help="encoder threads, as embedder.threads (0: the library's default)"
        ),
    ] = ENCODER_THREADS,
    plot: Annotated[Path | None, typer.Option("--plot", help="write a confusion-matrix PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Route every prompt (batched) and time single-prompt routing on the first --latency-prompts."""
    from collections import Counter

    from coe.cli.eval_inputs import load_for_eval
    from routers.category.evaluation import evaluate, plot_confusion, single_prompt_latency_ms

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise fail("--plot needs matplotlib: pip install 'coe[plot]'") from None
    run = load_for_eval(data, model, text_field, label_field, fail, backend, threads or None)
    pred = run.model.predict(run.prompts.texts, run.embedder)
    latencies = single_prompt_latency_ms(run.model, run.embedder, run.prompts.texts, latency_prompts)
    result = evaluate(run.prompts, run.header.labels, pred.probs, latencies, min_confidence)
    result.classifier = run.header.classifier
    result.encoder = run.header.encoder
    result.backend = run.embedder.backend if run.embedder is not None else None
    result.artefact_load_ms = round(run.load_ms, 1)
    result.stages = dict(Counter(pred.stages))
    result.train_overlap = run.train_overlap
    if plot is not None:
        plot_confusion(result, plot)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    typer.echo(
        f"{result.n} prompts: accuracy {result.accuracy:.3f} "
        f"(95% CI {result.accuracy_ci95[0]:.3f}-{result.accuracy_ci95[1]:.3f}), "
        f"macro-F1 {result.macro_f1:.3f}, ECE {result.ece:.3f}, "
        f"fallback {result.fallback_rate:.3f}, latency p50 {result.latency_ms_p50:.1f} ms "
        f"p99 {result.latency_ms_p99:.1f} ms, artefact load {run.load_ms:.0f} ms"
    )
    if plot is not None:
        typer.echo(f"confusion matrix written to {plot}")
