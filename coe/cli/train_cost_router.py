"""``coe train-cost-router``: turn an outcome table into the artefact ``router.type: cost`` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coe.cli.common import fail
from coe.cli.eval_outcomes import FormatOpt, MaxCharsOpt
from coe.cli.router_tools import EncoderOpt


def register(app: typer.Typer) -> None:
    app.command("train-cost-router")(train_cost_router)


def train_cost_router(
    outcomes: Annotated[list[Path], typer.Argument(help="outcome files (or folders of .jsonl files)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the .npz artefact")],
    fmt: FormatOpt = "coe",
    encoder: EncoderOpt = "all-MiniLM-L6-v2",
    max_chars: MaxCharsOpt = 512,
) -> None:
    """Train the cost-aware router on an outcome table; use the file as router.cost.model.

    The kNN quality model is tuned on a validation part of OUTCOMES (largest AIQ), then refit on all
    of them; the file stores vectors, outcomes and the recommended λ (the cheapest λ that matched the
    best single expert on validation).
    """
    from coe.encoding.cache import EmbeddingCache
    from coe.encoding.embedder import Embedder
    from coe.errors import CoEError
    from coe.evaluation.outcome_inputs import expand
    from coe.evaluation.outcomes import load_outcomes
    from routers.cost.training import tune, write_artefact

    try:
        table = load_outcomes(fmt, expand(outcomes))
        embedder = Embedder(encoder)
        vectors = EmbeddingCache(embedder, max_chars=max_chars or None).encode(table.prompts)
        report = tune(table, vectors)
        header = write_artefact(
            out,
            table,
            vectors,
            report.best,
            encoder=embedder.name,
            space=str(getattr(embedder, "space", embedder.name)),
            max_chars=max_chars or None,
            recommended_lam=report.recommended_lam,
        )
    except (CoEError, ValueError) as exc:
        raise fail(str(exc)) from None
    p = report.best
    lam = (
        f"{report.recommended_lam:.4g}"
        if report.recommended_lam is not None
        else "none (set router.cost.lam)"
    )
    typer.echo(
        f"ok {out}: {header.train_size} prompts, experts {', '.join(header.models)}\n"
        f"  tuned on {report.train_size} / validated on {report.validation_size}: k={p.k}, "
        f"temperature={p.temperature}, shrink={p.shrink}, cost={p.cost}; "
        f"validation AIQ {report.best_aiq:.4f} "
        f"(RouterBench kNN k={report.baseline_k}: {report.baseline_aiq:.4f})\n"
        f"  recommended lam: {lam} (cost unit {header.cost_unit})"
    )
