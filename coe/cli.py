"""The ``coe`` command. Imports stay light at module level so ``coe --help`` answers at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from coe.commands._util import DEFAULT_CONFIG, ConfigOpt, JsonOpt
from coe.config import CoEConfig, load_config
from coe.errors import CoEError, ConfigError

app = typer.Typer(
    help="CoE: route each prompt to the right expert LLM, answer it, and show why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experts_app = typer.Typer(help="Manage the experts of a registry.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")

out = Console()
err = Console(stderr=True)


def _load(path: Path) -> CoEConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(f"[red]error[/red] {issue}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the expert processes."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


# ----------------------------------------------------------------------------------- commands


@app.command()
def validate(
    file: Annotated[
        Path | None, typer.Argument(help="Registry to check (or --config/-c, or COE_CONFIG).")
    ] = None,
    config_file: ConfigOpt = DEFAULT_CONFIG,
    check_models: Annotated[bool, typer.Option(help="Also check that model files resolve.")] = True,
) -> None:
    """Check a registry: exit 0, or print each problem with file, line and key path and exit 1."""
    file = file or config_file  # the positional form came first; -c works as for every other command
    config = _load(file)
    problems: list[str] = []
    if check_models:
        from coe.encoders import resolve_encoder_files
        from coe.errors import ModelNotFoundError
        from coe.serving.models import check_serve

        for name, expert in config.experts.items():
            if expert.serve is not None and (found := check_serve(expert.serve, config.base_dir)):
                problems.append(f"{file}: experts.{name}.serve.{found[0]}: {found[1]}")
        try:
            emb = config.embedder
            resolve_encoder_files(emb.model, emb.backend, emb.path, config.base_dir)
        except ModelNotFoundError as exc:
            problems.append(f"{file}: embedder: {exc}")
    for problem in problems:
        err.print(f"[red]error[/red] {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    cats = len(config.router.categories)
    out.print(f"[green]ok[/green] {file}: {len(config.experts)} experts, {cats} categories", highlight=False)


@app.command()
def route(
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: which expert would answer, and why. Starts no expert and generates nothing."""
    from coe.orchestrator import CoE

    coe = CoE(_load(config))
    try:
        decision = coe.route(prompt)[0]
    except CoEError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json({**decision.model_dump(), "expert": decision.expert})
        return
    _show_decision(decision.model_dump())


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The prompt, or - to read it from standard input.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    as_json: JsonOpt = False,
    expert: Annotated[
        str | None, typer.Option("--expert", "-e", help="Skip routing; ask this expert.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Limit the answer's length.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    trace: Annotated[bool, typer.Option("--trace/--no-trace", help="Print the routing trace.")] = True,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they arrive.")] = False,
) -> None:
    """Route the prompt, let the chosen expert answer, print the answer (and the trace)."""
    from coe.orchestrator import CoE

    text = sys.stdin.read() if prompt == "-" else prompt
    params = {
        k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature}.items() if v is not None
    }
    _stop_on_sigterm()
    coe = CoE(_load(config))
    try:
        if stream and not as_json:
            answer = coe._run(_stream_to_stdout(coe, text, expert, params))
        else:
            answer = coe.ask(text, expert=expert, **params)
    except CoEError as exc:
        raise _fail(exc) from None
    finally:
        coe.close()
    if as_json:
        _print_json(answer.summary())
        return
    if not stream:
        out.print(answer.text, highlight=False, markup=False)
    if trace:
        _show_trace(answer.summary())


async def _stream_to_stdout(coe: Any, text: str, expert: str | None, params: dict[str, Any]) -> Any:
    async for event in coe.astream(text, expert=expert, **params):
        if event.type == "delta":
            sys.stdout.write(event.text)
            sys.stdout.flush()
        else:
            sys.stdout.write("\n")
            return event.answer
    return None


# ------------------------------------------------------------------------------ experts group


@experts_app.command("list")
def experts_list(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """The experts of the registry, where they live and which categories map to them."""
    cfg = _load(config)
    rows = []
    for name, e in cfg.experts.items():
        cats = [c for c, spec in cfg.router.categories.items() if spec.expert == name]
        if cfg.router.fallback and cfg.router.fallback.expert == name:
            cats.append("(fallback)")
        where = e.serve.where if e.serve else (e.endpoint or e.provider or "")
        rows.append({"name": name, "kind": e.kind, "model": e.model or name, "where": where,
                     "params_b": e.params_b, "categories": cats})  # fmt: skip
    if as_json:
        _print_json(rows)
        return
    table = Table("expert", "kind", "model", "where", "params (B)", "categories")
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            r["model"],
            r["where"],
            str(r["params_b"] or "-"),
            ", ".join(r["categories"]),
        )
    out.print(table)


@experts_app.command("up")
def experts_up(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experts to start (default: all managed).")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Start managed experts in the background; later `coe ask` calls reuse them."""
    from coe.serving.pool import ExpertPool

    pool = ExpertPool(_load(config))
    try:
        statuses = asyncio.run(pool.up(names))
    except CoEError as exc:
        raise _fail(exc) from None
    _show_status(statuses)


@experts_app.command("down")
def experts_down(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Stop the experts that `coe experts up` started."""
    from coe.serving.pool import ExpertPool

    stopped = ExpertPool(_load(config)).down()
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@experts_app.command("status")
def experts_status(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """Which experts are running, where, and which are reachable."""
    from coe.serving.pool import ExpertPool

    statuses = asyncio.run(ExpertPool(_load(config)).status())
    if as_json:
        _print_json([s.__dict__ for s in statuses])
        return
    _show_status(statuses)


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
    out.rule("routing trace")
    if trace.get("decision"):
        _show_decision(trace["decision"])
    if r := trace.get("retrieval"):
        docs = ", ".join(r["documents"]) or "no documents"
        out.print(f"retrieval ({r['gate']}): {docs}; {r['error'] or r['reason']}", highlight=False)
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


def _show_status(statuses: list[Any]) -> None:
    table = Table("expert", "kind", "state", "url", "pid", "detail")
    for s in statuses:
        table.add_row(s.name, s.kind, s.state, s.url or "-", str(s.pid or "-"), s.detail)
    out.print(table)


def _register_command_modules() -> None:
    from coe.commands import register_all

    register_all(app)


_register_command_modules()


def main() -> None:  # pragma: no cover - console entry for `python -m coe`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
