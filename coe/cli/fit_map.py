"""``coe fit-map``: the category -> expert map that maximises quality on evaluation outcomes,
optionally under a budget on average cost or average active parameters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from coe.cli.common import fail
from coe.cli.eval_outcomes import FormatOpt, GreedyFileOptions, TestFractionOpt


def register(app: typer.Typer) -> None:
    app.command("fit-map", cls=GreedyFileOptions)(fit_map)


def fit_map(
    outcomes: Annotated[
        list[Path] | None, typer.Argument(help="outcome files (or folders of .jsonl files)")
    ] = None,
    fmt: FormatOpt = "coe",
    from_traces: Annotated[
        Path | None,
        typer.Option(
            "--from-traces", help="refit from a trace store's feedback (SQLite file or jsonl export) instead"
        ),
    ] = None,
    min_feedback: Annotated[
        int,
        typer.Option("--min-feedback", min=1, help="--from-traces: grades a (category, expert) cell needs"),
    ] = 5,
    confidence_z: Annotated[
        float,
        typer.Option("--confidence-z", min=0, help="--from-traces: compare cells at mean - z std. errors"),
    ] = 1.645,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="budget: average cost per prompt, in the table's unit")
    ] = None,
    max_params: Annotated[
        float | None, typer.Option("--max-params", help="budget: average active parameters (billions)")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="experts.yaml whose params_b size each expert")
    ] = None,
    test: Annotated[
        list[Path] | None, typer.Option("--test", help="outcome files to report the fitted map on")
    ] = None,
    test_fraction: TestFractionOpt = 0.0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the YAML here (default: stdout)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """Fit the category -> expert map with the best quality on an outcome table, optionally under a budget.

    Categories are the table's task column (RouterBench eval_name, RouterDC task, RouteLLM subject,
    `category` in our own format). Writes a router.categories fragment plus a report as YAML.
    """
    if max_cost is not None and max_params is not None:
        raise fail("give at most one budget: --max-cost or --max-params")
    if from_traces is not None:
        if outcomes:
            raise fail("give outcome files or --from-traces, not both")
        _from_traces(from_traces, min_feedback, confidence_z, max_params, config, out, as_json)
        return
    if not outcomes:
        raise fail("give outcome files, or --from-traces STORE")
    _from_outcomes(outcomes, fmt, test, test_fraction, max_cost, max_params, config, out, as_json)


def _from_outcomes(
    outcomes: list[Path],
    fmt: str,
    test: list[Path] | None,
    test_fraction: float,
    max_cost: float | None,
    max_params: float | None,
    config: Path | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """The map fitted on outcome tables (routers.category.fit_map), reported on a held-out side when
    asked; a budget no map can meet fails naming the cheapest map's average."""
    from coe.errors import CoEError
    from coe.evaluation.outcome_inputs import expand, load_sides
    from coe.evaluation.outcomes import load_outcomes
    from routers.category.fit_map import Budget, fit, to_yaml

    budget = None
    if max_cost is not None:
        budget = Budget(kind="cost", limit=max_cost)
    elif max_params is not None:
        budget = Budget(kind="params", limit=max_params)
    try:
        params_b = _params_from(config) if config is not None else None
        if test or test_fraction > 0:
            table, held, _ = load_sides(fmt, outcomes, test or [], test_fraction or 0.25)
        else:
            table, held = load_outcomes(fmt, expand(outcomes)), None
        report = fit(table, budget, params_b, held)
    except (CoEError, ValueError) as exc:
        raise fail(str(exc)) from None
    if not report.feasible and budget is not None:
        cheapest = report.frontier[0].cost
        raise fail(
            f"no map fits {budget.kind} budget {budget.limit:g}: the cheapest map averages {cheapest:.4g}"
        )
    if _write(to_yaml(report), report.model_dump_json(indent=2), out, as_json):
        typer.echo(
            f"ok {out}: quality {report.expected_quality:.4f}, average cost {report.average_cost:.4g} "
            f"{report.cost_unit}"
            + (
                f", average active parameters {report.average_active_params_b:.3g}B"
                if report.average_active_params_b is not None
                else ""
            ),
            err=True,
        )


def _from_traces(
    source: Path,
    min_feedback: int,
    confidence_z: float,
    max_params: float | None,
    config: Path | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """The map refitted from production feedback (coe.traces.refit), same solver as above."""
    from coe.traces.refit import refit, to_yaml
    from coe.traces.replay import load

    if max_params is not None and config is None:
        raise fail("--max-params with --from-traces needs --config for each expert's params_b")
    try:
        records, feedback = load(source)
        params = _params_from(config) if config is not None else None
        report = refit(
            records, feedback, min_feedback=min_feedback, confidence_z=confidence_z, cost=params,
            budget=max_params,
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        raise fail(exc) from None
    if _write(to_yaml(report, str(source)), report.model_dump_json(indent=2), out, as_json):
        changed = ", ".join(report.changed) or "none"
        typer.echo(f"ok {out}: {report.graded} grades, categories changed: {changed}", err=True)


def _params_from(config: Path) -> dict[str, float]:
    from coe.config import load_config

    cfg = load_config(config)
    return {name: e.params_b for name, e in cfg.experts.items() if e.params_b is not None}


def _write(fragment: str, report_json: str, out: Path | None, as_json: bool) -> bool:
    """The YAML fragment to ``out`` (or stdout), the report as JSON when asked; True when the caller
    should print its one-line summary (a file was written and no JSON went to stdout)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(fragment, encoding="utf-8")
    if as_json:
        sys.stdout.write(report_json + "\n")
    elif out is None:
        sys.stdout.write(fragment)
    return out is not None and not as_json
