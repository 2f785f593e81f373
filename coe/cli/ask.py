"""``coe validate``, ``coe route`` and ``coe ask``: check a registry, route a prompt, answer it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from coe.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    JsonOpt,
    error,
    exit_on_sigterm,
    fail,
    load,
    note,
    out,
    print_json,
    rule,
)
from coe.errors import CoEError

if TYPE_CHECKING:
    from coe.config import CoEConfig


def register(app: typer.Typer) -> None:
    for command in (validate, route, ask):
        app.command()(command)


def validate(
    file: Annotated[
        Path | None, typer.Argument(help="Registry to check (or --config/-c, or COE_CONFIG).")
    ] = None,
    config_file: ConfigOpt = DEFAULT_CONFIG,
    check_models: Annotated[
        bool,
        typer.Option(help="Also check that model files resolve and that every strategy loads its files."),
    ] = True,
) -> None:
    """Check a registry: exit 0, or print every problem with file, line and key path and exit 1.

    Every stage reports in the same run: duplicate keys and YAML, the schema, the cross-references,
    then (unless --no-check-models) the model files and every strategy built as ``coe serve`` would
    build it (the router and its artefact, the aggregator, the retrieval gate and index, the signal
    checks, the sessions, the cache and its verifier). No expert is started. A category with fewer
    than 3 examples is a warning on stderr, not an error."""
    from coe.config.loader import read_config
    from coe.config.messages import format_issue, line_index

    file = file or config_file  # the positional form came first; -c works as for every other command
    config, issues = read_config(file)
    for issue in issues:
        error(issue)
    if config is None:
        raise typer.Exit(1)
    problems = _load_problems(config) if check_models else []
    lines = line_index(file.read_text(encoding="utf-8"))
    for key, message in problems:
        error(format_issue(str(file), lines, tuple(key.split(".")), message))
    for loc, message in _rough_categories(config):
        note("warning", format_issue(str(file), lines, loc, message))
    if issues or problems:
        raise typer.Exit(1)
    cats = len(config.router.category_routes())
    out.print(f"[green]ok[/green] {file}: {len(config.experts)} experts, {cats} categories", highlight=False)


ROUGH_BELOW = 3  # examples per category under which the router's confidence is only rough


def _rough_categories(config: CoEConfig) -> list[tuple[tuple[str, ...], str]]:
    """Categories a router fits on their examples with fewer than ``ROUGH_BELOW`` of them: their
    confidence (and the out-of-scope floor) rests on too few points to mean much."""
    if getattr(config.router, "model", None):  # a trained artefact does not fit on the examples
        return []
    found: list[tuple[tuple[str, ...], str]] = []
    for name, spec in config.router.category_routes().items():
        if len(spec.examples) < ROUGH_BELOW:
            found.append(
                (
                    ("router", "categories", name, "examples"),
                    f"{len(spec.examples)} example(s): with fewer than {ROUGH_BELOW} the router's "
                    "confidence for this category is rough; add examples",
                )
            )
    return found


def _load_problems(config: CoEConfig) -> list[tuple[str, str]]:
    """(key path, message) for each model or adapter file that does not resolve (or is no adapter of its
    expert's base) and each strategy that cannot
    be built (coe.pipeline.readiness). The strategies are built only once the encoder resolves: each of them
    would otherwise repeat its error."""
    from coe.encoding.files import resolve_encoder_files
    from coe.errors import ModelNotFoundError
    from coe.experts.adapters import check_adapter
    from coe.experts.models import check_serve
    from coe.orchestrator import CoE
    from coe.pipeline import readiness

    problems: list[tuple[str, str]] = []
    for name, expert in config.experts.items():
        if expert.serve is None:
            continue
        if found := check_serve(expert.serve, config.base_dir):
            problems.append((f"experts.{name}.serve.{found[0]}", found[1]))
        elif (why := check_adapter(expert.serve, config.base_dir)) is not None:
            problems.append((f"experts.{name}.serve.lora", why))
    try:
        emb = config.embedder
        resolve_encoder_files(emb.model, emb.backend, emb.path, config.base_dir)
    except ModelNotFoundError as exc:
        return [*problems, ("embedder", str(exc))]
    with CoE(config) as coe:  # builds strategies only: no expert is started
        problems += readiness.problems(coe.parts).items()
    return problems


def route(
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: which expert would answer, and why. Starts no expert and generates nothing."""
    from coe.orchestrator import CoE

    coe = CoE(load(config))
    try:
        decision = coe.route(prompt)[0]
    except CoEError as exc:
        raise fail(exc) from None
    if as_json:
        print_json({**decision.model_dump(), "expert": decision.expert})
        return
    _show_decision(decision.model_dump())


def ask(
    prompt: Annotated[str, typer.Argument(help="The prompt, or - to read it from standard input.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
    expert: Annotated[
        str | None, typer.Option("--expert", "-e", help="Skip routing; ask this expert.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Limit the answer's length.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Sampling temperature.")] = None,
    trace: Annotated[bool, typer.Option("--trace/--no-trace", help="Print the routing trace.")] = True,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they arrive.")] = False,
) -> None:
    """Route the prompt, let the chosen expert answer, print the answer (and the trace)."""
    from coe.orchestrator import CoE

    text = sys.stdin.read() if prompt == "-" else prompt
    params: dict[str, Any] = {
        k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature}.items() if v is not None
    }
    exit_on_sigterm()
    coe = CoE(load(config))
    try:
        if stream and not as_json:
            answer = coe.run(_stream_to_stdout(coe, text, expert, params))
        else:
            answer = coe.ask(text, expert=expert, **params)
    except CoEError as exc:
        raise fail(exc) from None
    finally:
        coe.close()
    summary = answer.summary()
    _note_fallback(summary)
    if as_json:
        print_json(summary)
        return
    if not stream:  # as the model wrote it: rich would rewrap it to the console's width
        sys.stdout.write(answer.text if answer.text.endswith("\n") else answer.text + "\n")
        sys.stdout.flush()
    if trace:
        _show_trace(summary)


def _note_fallback(summary: dict[str, Any]) -> None:
    """One line on stderr when the answer is not from the expert chosen first because that one failed:
    with --no-trace (or --json) the answer would otherwise come from another expert without a word."""
    failed = [
        a for a in summary["trace"].get("attempts", []) if not a["ok"] and a["expert"] != summary["expert"]
    ]
    if failed and summary.get("expert"):
        why = "; ".join(f"expert {a['expert']!r} failed: {a['error']}" for a in failed)
        note("fallback", f"{why}; {summary['expert']!r} answered")


async def _stream_to_stdout(coe: Any, text: str, expert: str | None, params: dict[str, Any]) -> Any:
    async for event in coe.astream(text, expert=expert, **params):
        if event.type == "delta":
            sys.stdout.write(event.text)
            sys.stdout.flush()
        else:
            sys.stdout.write("\n")
            return event.answer
    return None


# ------------------------------------------------------------------------------------ display


def _show_decision(d: dict[str, Any]) -> None:
    out.print(f"route -> [bold]{d['experts'][0]}[/bold] (router: {d['router']})", highlight=False)
    if d.get("scores"):  # plug-in routers may decide without per-category scores
        table = Table("category", "p", "cosine")
        for cat, p in d["scores"].items():
            table.add_row(cat, f"{p:.3f}", f"{d.get('similarities', {}).get(cat, 0):.3f}")
        out.print(table)
    out.print(f"reason: {d.get('reason', '')}", highlight=False)
    if len(d["experts"]) > 1:
        out.print(f"candidates in order: {' -> '.join(d['experts'])}", highlight=False)


def _show_trace(summary: dict[str, Any]) -> None:
    trace = summary["trace"]
    rule("routing trace")
    for v in (trace.get("signals") or {}).get("verdicts", []):
        score = f" (score {v['score']:.2f})" if v.get("score") is not None else ""
        out.print(f"signal {v['signal']}: {v['verdict']}{score}, action {v['action']}", highlight=False)
    if trace.get("decision"):
        _show_decision(trace["decision"])
    if r := trace.get("retrieval"):
        docs = ", ".join(r["documents"]) or "no documents"
        out.print(f"retrieval ({r['gate']}): {docs}; {r['error'] or r['reason']}", highlight=False)
    if caps := trace.get("capabilities"):
        for name, why in caps["excluded"].items():
            out.print(f"expert {name}: excluded, {why}", highlight=False)
    for a in trace.get("attempts", []):
        status = "[green]ok[/green]" if a["ok"] else f"[red]failed[/red]: {a['error']}"
        out.print(f"expert {a['expert']}: {status} in {a['latency_ms']:.0f} ms", highlight=False)
    if agg := trace.get("aggregation"):
        missing = "; ".join(f"{name}: {why}" for name, why in agg["missing"].items())
        out.print(
            f"aggregation ({agg['aggregator']}): answers from {', '.join(agg['answered']) or 'none'}"
            + (f", chose {agg['chosen']}" if agg.get("chosen") else "")
            + (f"; no answer from {missing}" if missing else ""),
            highlight=False,
        )
    usage = trace.get("usage", {})
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in trace.get("timings_ms", {}).items())
    out.print(
        f"answered by [bold]{summary['expert']}[/bold] ({summary.get('model')}); "
        f"tokens {usage.get('prompt_tokens', 0)} in / {usage.get('completion_tokens', 0)} out; "
        f"fallback used: {trace.get('fallback_used')}",
        highlight=False,
    )
    out.print(f"timings: {timings}", highlight=False)
