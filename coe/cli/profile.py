"""``coe profile``: measure every expert on validation data and write the skill profile that the
skills router (``router.skills.profile``) recruits by."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, fail

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from routers.skills.profile import SkillProfile


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)


def profile(
    data: Annotated[list[Path], typer.Argument(help="validation JSONL file(s) with gold answers")],
    grader: Annotated[str, typer.Option("--grader", help="mc | number | exact")] = "mc",
    config: ConfigOpt = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the profile")] = Path(
        "profile.json"
    ),
    experts: Annotated[
        str | None, typer.Option("--experts", help="comma-separated experts to profile (default: all)")
    ] = None,
    annotator: Annotated[
        str | None,
        typer.Option("--annotator", help="expert that names keywords (default: embedding fast path)"),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="annotator samples per question")] = 3,
    keywords: Annotated[int, typer.Option("--keywords", min=1, help="fast-path keywords per question")] = 3,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="first N questions of each file")
    ] = None,
    aggregator_questions: Annotated[
        int, typer.Option("--aggregator-questions", min=0, help="mixed questions to choose the aggregator on")
    ] = 20,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="per answer")] = None,
    text_field: Annotated[str | None, typer.Option("--text-field")] = None,
    gold_field: Annotated[str | None, typer.Option("--gold-field")] = None,
    category_field: Annotated[str | None, typer.Option("--category-field")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the profile summary as JSON")] = False,
) -> None:
    """Measure each expert's skills on graded questions; the profile skills routing recruits by.

    Every expert answers the questions (batched); answers are graded and each keyword scores +1/-1
    per expert; the aggregator is chosen too. Reference the file as router.skills.profile.
    """
    from coe.config import load_config
    from coe.errors import CoEError, ConfigError
    from routers.skills.qa import GRADERS

    if grader not in GRADERS:
        raise fail(f"--grader: expected one of {', '.join(GRADERS)}, got {grader!r}")
    try:
        registry = load_config(config)
    except ConfigError as exc:
        raise fail("\n".join(exc.issues)) from None
    names = [e.strip() for e in experts.split(",") if e.strip()] if experts else list(registry.experts)
    unknown = [e for e in [*names, *([annotator] if annotator else [])] if e not in registry.experts]
    if unknown:
        raise fail(f"unknown expert(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.experts))}")
    fields = {"text_field": text_field, "gold_field": gold_field, "category_field": category_field}
    settings = {"annotator": annotator, "samples": samples, "keywords": keywords}
    params = {"max_tokens": max_tokens} if max_tokens else {}
    try:
        result = _run(
            registry, data, grader, names, fields, settings, aggregator_questions, limit, params, out
        )
    except CoEError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(_summary(result, out), indent=2) + "\n")
    else:
        _print(result, out)


def _run(
    registry: CoEConfig,
    data: list[Path],
    grader: str,
    names: list[str],
    fields: dict[str, str | None],
    settings: dict[str, Any],
    aggregator_questions: int,
    limit: int | None,
    params: dict[str, Any],
    out: Path,
) -> SkillProfile:
    from coe.encoding.cache import EmbeddingCache
    from coe.encoding.embedder import shared_embedder
    from coe.orchestrator import CoE
    from routers.skills.build import build_profile
    from routers.skills.profile import save_profile
    from routers.skills.qa import read_items

    items = read_items(data, grader, limit=limit, **fields)  # type: ignore[arg-type]
    cache = EmbeddingCache(shared_embedder(registry.embedder, registry.base_dir))
    coe = CoE(registry)
    try:
        result = coe.run(
            build_profile(
                coe,
                items,
                grader,
                cache.encode,
                experts=names,
                aggregator_questions=aggregator_questions,
                params=params,
                sources=[str(p) for p in data],
                progress=lambda line: typer.echo(line, err=True),
                **settings,
            )
        )
    finally:
        coe.close()
    save_profile(result, out)
    return result


def _summary(result: SkillProfile, out: Path) -> dict[str, Any]:
    return {
        "profile": str(out),
        "questions": result.n_questions,
        "vocabulary": len(result.vocabulary),
        "keywords_from": result.keywords_from,
        "experts": {
            name: {
                "accuracy": round(e.accuracy, 4),
                "categories": {c: round(s.accuracy, 4) for c, s in e.categories.items()},
            }
            for name, e in result.experts.items()
        },
        "aggregator": result.aggregator.model_dump(),
    }


def _print(result: SkillProfile, written: Path) -> None:
    from rich.table import Table

    from coe.cli.common import out

    categories = sorted({c for e in result.experts.values() for c in e.categories})
    table = Table("expert", "accuracy", *categories)
    for name, e in result.experts.items():
        cells = [f"{e.categories[c].accuracy:.3f}" if c in e.categories else "-" for c in categories]
        table.add_row(name, f"{e.accuracy:.3f} ({e.correct}/{e.n})", *cells)
    out.print(table)
    out.print(f"aggregator: {result.aggregator.expert} ({result.aggregator.reason})", highlight=False)
    out.print(
        f"wrote {written}: {result.n_questions} questions, {len(result.vocabulary)} keywords "
        f"({result.keywords_from}); reference it as router.skills.profile",
        highlight=False,
    )
