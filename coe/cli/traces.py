"""``coe traces list|show|export``, ``coe replay`` and ``coe judge``: the trace store `coe serve`
writes, what a candidate registry would change on the traffic it holds, and grading stored answers
with an LLM judge."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, JsonOpt, error, fail, load, note, out, print_json
from coe.clock import local_time

if TYPE_CHECKING:
    from coe.traces import TraceStore

traces_app = typer.Typer(help="The trace store: list, show, export.", no_args_is_help=True)
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="The trace store (SQLite file); default: the one of --config."),
]


def register(app: typer.Typer) -> None:
    app.add_typer(traces_app, name="traces")
    app.command("replay")(replay)
    app.command("judge")(judge)


def _open(store: Path | None, config: Path) -> TraceStore:
    from coe.traces import TraceStore, open_store

    if store is not None:
        if not store.is_file():
            raise fail(f"{store}: no such trace store")
        return TraceStore(store)
    return open_store(load(config))


@traces_app.command("list")
def list_traces(
    store: StoreOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="At most this many, most recent first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The most recent requests the store holds."""
    s = _open(store, config)
    try:
        records = s.recent(limit)
    finally:
        s.close()
    if as_json:
        print_json([r.model_dump(mode="json", exclude={"prompt", "answer"}) for r in records])
        return
    table = Table("id", "time", "model", "category", "expert", "total ms", "tokens")
    for r in records:
        table.add_row(
            r.id,
            local_time(r.time),
            r.model,
            (r.decision.category if r.decision else None) or "-",
            r.expert,
            f"{r.timings_ms.get('total', 0):.0f}",
            str(r.prompt_tokens + r.completion_tokens),
        )
    out.print(table)


@traces_app.command("show")
def show_trace(
    rid: Annotated[str, typer.Argument(help="The response id (chatcmpl-..., resp_..., msg_...).")],
    store: StoreOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """One record and its feedback as JSON; exit 1 when the store does not hold it."""
    s = _open(store, config)
    try:
        record = s.get(rid)
        grades = s.feedback(rid)
    finally:
        s.close()
    if record is None:
        raise fail(f"no trace {rid!r} in the store (never recorded, or expired)")
    print_json({**record.model_dump(mode="json"), "feedback": [f.model_dump(mode="json") for f in grades]})


@traces_app.command("export")
def export_traces(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The file to write.")],
    fmt: Annotated[Literal["jsonl", "parquet"], typer.Option("--format", help="jsonl or parquet")] = "jsonl",
    store: StoreOpt = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Every record (oldest first) and its feedback. jsonl: one record per line, then one
    ``{"feedback": ...}`` line per grade (what `coe replay --traces` reads back); parquet: one row
    per record, the nested fields as JSON text, and the mean grade (needs pyarrow)."""
    from coe.traces.store import mean_scores

    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise fail("--format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                       "--format jsonl needs nothing") from None  # fmt: skip
    s = _open(store, config)
    try:
        records = list(s.records())
        grades = s.feedback()
    finally:
        s.close()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out_file.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(r.model_dump_json() + "\n")
            for g in grades:
                f.write(json.dumps({"feedback": g.model_dump(mode="json")}) + "\n")
    else:
        means = mean_scores(grades)
        rows = []
        for r in records:
            row = r.model_dump(mode="json")
            for key in ("decision", "attempts", "timings_ms", "cache", "guard", "prompt"):
                row[key] = json.dumps(row[key]) if row[key] is not None else None
            row["score"] = means.get(r.id)
            rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), out_file)
    note("ok", f"{out_file}: {len(records)} records, {len(grades)} feedback rows", style="green")


def replay(
    traces: Annotated[Path, typer.Option("--traces", help="A trace store (SQLite file) or a jsonl export.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="The candidate registry to route with.")],
    as_json: JsonOpt = False,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Replay even when categories or experts do not match.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap interval.")] = 0,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Prompts per encoder call (faster in bulk); default: the registry's embedder.batch_size. "
            "With onnx-int8 a vector then depends slightly on its batch-mates: a few borderline "
            "decisions may differ from what serving decides.",
        ),
    ] = None,
) -> None:
    """Route the logged requests with a candidate registry, calling no expert, and report what would
    move: `agreement`, `moved`, per category and expert, predicted quality (from feedback) and cost."""
    from coe.orchestrator import CoE
    from coe.traces import replay as rp

    cfg = load(config)
    if batch_size is not None:
        cfg = cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update={"batch_size": batch_size})})
    try:
        records, grades = rp.load(traces)
    except (OSError, ValueError) as exc:
        raise fail(exc) from None
    if not records:
        raise fail(f"{traces}: no trace records")
    problems = rp.mismatches(records, cfg, str(config))
    if problems and not allow_mismatch:
        for p in problems:
            error(p)
        raise typer.Exit(1)
    coe = CoE(cfg)
    try:
        report = rp.replay(records, grades, coe, source=str(traces), config_name=str(config), seed=seed)
    except ValueError as exc:
        raise fail(exc) from None
    finally:
        coe.close()
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    for p in report.mismatches:
        note("mismatch", p)
    agreement = f"{report.agreement:.3f}" if report.agreement is not None else "-"
    out.print(
        f"replayed {report.replayed} of {report.requests} requests ({report.requests_per_s:.0f}/s): "
        f"agreement {agreement}, moved {report.moved}"
    )
    table = Table("category", "requests", "moved", "to")
    for c, m in sorted(report.per_category.items()):
        table.add_row(
            c, str(m.requests), str(m.moved), ", ".join(f"{e} {n}" for e, n in sorted(m.to.items()))
        )
    out.print(table)
    q = report.quality
    if q.change is not None and q.interval is not None:
        out.print(
            f"quality {q.current:.3f} -> {q.predicted:.3f} (change {q.change:+.3f}, 95% "
            f"[{q.interval[0]:+.3f}, {q.interval[1]:+.3f}]) on {q.covered} requests; {q.uncovered} uncovered"
        )
    else:
        out.print(f"quality: {q.model}")


def judge(
    traces: Annotated[Path, typer.Argument(help="The trace store (SQLite file) whose answers to grade.")],
    judge_expert: Annotated[str, typer.Option("--judge", help="The expert of --config that grades.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int | None, typer.Option(help="Grade at most this many (the most recent).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Judge calls at once.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Grade stored answers with an expert as judge (MT-Bench single-answer grading, Rating: [[N]] of
    10 -> score N/10), written as feedback rows beside the records. Needs traces.store_text."""
    from coe.orchestrator import CoE
    from coe.traces import TraceStore
    from coe.traces.judge import judge as run_judge

    cfg = load(config)
    if judge_expert not in cfg.experts:
        raise fail(f"--judge {judge_expert!r} is not an expert of {config} (its experts: "
                   f"{', '.join(sorted(cfg.experts))})")  # fmt: skip
    if traces.suffix == ".jsonl" or not traces.is_file():
        raise fail(f"{traces}: give the trace store (SQLite file) so the grades can be written beside it")
    store = TraceStore(traces)
    try:
        graded = {f.id for f in store.feedback() if f.source == f"judge:{judge_expert}"}
        records = [r for r in store.recent(limit or 1_000_000_000) if r.id not in graded]
        if records and all(r.answer is None for r in records):
            raise fail("the traces hold no answer text: judging needs traces recorded with "
                       "traces.store_text: true")  # fmt: skip
        coe = CoE(cfg)
        try:
            rows, report = coe.run(run_judge(coe, records, judge_expert, concurrency))
        finally:
            coe.close()
        for row in rows:
            store.add_feedback(row)
    finally:
        store.close()
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return
    mean = f"{report.mean_score:.3f}" if report.mean_score is not None else "-"
    out.print(
        f"graded {report.graded} answers with {judge_expert} (mean {mean}); {report.unparsed} replies "
        f"without a rating, {report.failed} failed, {report.skipped_no_text} without text"
    )
