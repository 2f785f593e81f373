"""``coe batch IN.jsonl OUT.jsonl``: answer a file of prompts, each expert loaded once, resumable.

Imports of the orchestrator and rich's progress bar stay inside the command (``coe --help`` is fast).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, err, exit_on_sigterm, fail, load, note

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from coe.batch.files import BatchItem, BatchResult
    from coe.batch.runner import BatchReport


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)


def batch(
    input_file: Annotated[
        Path, typer.Argument(metavar="IN.jsonl", help="One item per line: id, prompt or messages.")
    ],
    output_file: Annotated[
        Path, typer.Argument(metavar="OUT.jsonl", help="Results, appended as they finish; rerun to resume.")
    ],
    config: ConfigOpt = DEFAULT_CONFIG,
    max_tokens: Annotated[int | None, typer.Option(help="Limit each answer's length.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests at once per expert (default: its parallel slots).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary at the end.")] = False,
) -> None:
    """Route every item first, group the items by expert, load each expert once and run its group.

    Input lines: `id` and `prompt` or `messages`; optional `expert` (pinned), `params`, `meta`.

    Output lines: `id`, `expert`, `answer` or `error`, `trace` (and `meta`), written as each finishes.

    A malformed input line is reported with its line number and skipped. Killed and started again,
    it finishes the job with every id exactly once in OUT.jsonl.

    Exit 0 when every item was answered; 1 when an input line was skipped or an item failed.
    """
    items, problems = _read_items(input_file)
    params = {
        k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature}.items() if v is not None
    }
    report = _run(config, items, output_file, params, concurrency, progress)
    _summarise(report, len(problems), output_file, as_json)
    if report.failed or problems:
        raise typer.Exit(1)


def _read_items(input_file: Path) -> tuple[list[BatchItem], list[str]]:
    """The items of IN.jsonl, each skipped line noted on stderr; a file that cannot be read at all
    fails the command before any expert starts."""
    from coe.batch.files import BatchInputError, read_items

    if not input_file.is_file():
        raise fail(FileNotFoundError(f"{input_file}: no such file"))
    try:
        items, problems = read_items(input_file)
    except BatchInputError as exc:
        raise fail(exc) from None
    for problem in problems:
        note("skipped", problem)
    return items, problems


def _run(
    config: Path,
    items: list[BatchItem],
    output_file: Path,
    params: dict[str, Any],
    concurrency: int | None,
    progress: bool,
) -> BatchReport:
    """Run the batch with its own CoE, stopped on the way out whatever happens; Ctrl-C exits 130 with
    the finished items kept for a resume."""
    from coe.batch.runner import run_batch
    from coe.errors import CoEError
    from coe.orchestrator import CoE

    exit_on_sigterm()
    coe = CoE(load(config))
    bar = _ProgressBar(err) if progress else None
    try:
        return coe.run(
            run_batch(coe, items, out=output_file, params=params, concurrency=concurrency, observer=bar)
        )
    except CoEError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print(f"interrupted: finished items are in {output_file}; run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        if bar is not None:
            bar.stop()
        coe.close()


def _summarise(report: BatchReport, skipped_lines: int, output_file: Path, as_json: bool) -> None:
    """The run's notes, then its summary: one JSON object on stdout, or one line on stderr."""
    for problem in report.problems:
        note("note", problem)
    failed = len(report.failed)
    summary = {
        "items": len(report.results),
        "answered": len(report.results) - failed,
        "failed": failed,
        "resumed": report.resumed,
        "skipped_lines": skipped_lines,
        "groups": report.groups,
        "loads": report.loads,
        "evictions": report.evictions,
        "wall_s": report.wall_s,
        "output": str(output_file),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        err.print(
            f"{summary['answered']} answered, {failed} failed, {report.resumed} already done, "
            f"{skipped_lines} input lines skipped; loads {report.loads or '{}'}; {report.wall_s:.1f} s "
            f"-> {output_file}",
            highlight=False,
        )


class _ProgressBar:
    """A rich progress display: all items with ETA, then one line per expert group."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress: Progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=console,
        )
        self.total: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.failed: dict[TaskID, int] = {}

    def planned(self, groups: Mapping[str, int], resumed: int) -> None:
        todo = sum(groups.values())
        self.total = self.progress.add_task("all items", total=todo + resumed, completed=resumed, failed=0)
        for name, count in groups.items():
            self.tasks[name] = self.progress.add_task(f"  {name}", total=count, failed=0)
        self.progress.start()

    def finished(self, result: BatchResult, group: str) -> None:
        for task in (self.total, self.tasks.get(group)):
            if task is None:
                continue
            self.failed[task] = self.failed.get(task, 0) + (not result.ok)
            self.progress.update(task, advance=1, failed=self.failed[task])

    def stop(self) -> None:
        self.progress.stop()
