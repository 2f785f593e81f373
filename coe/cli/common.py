"""What every command shares: the common options, output, the one error style, loading the registry
and stopping cleanly on SIGTERM. This module registers no command."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from coe.config import CoEConfig

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="COE_CONFIG", help="Registry file (experts.yaml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DEFAULT_CONFIG = Path("experts.yaml")

# Written to a pipe or a file, output is for scripts and pastes: tables keep every character of an
# id or a path (rich would otherwise cut them at 80 columns) and long lines are not wrapped.
PIPE_WIDTH = 100_000
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True)


def rule(title: str) -> None:
    """A section heading: a rule across a terminal, a plain line elsewhere (a rule to a pipe would be
    ``PIPE_WIDTH`` characters long)."""
    if out.is_terminal:
        out.rule(title)
    else:
        out.print(f"-- {title} --", highlight=False, markup=False)


def error(message: object) -> None:
    """Print ``error MESSAGE`` on stderr. The message is plain text: brackets in it are not markup."""
    err.print(Text.assemble(("error", "red"), " ", str(message)), highlight=False, soft_wrap=True)


def fail(message: object) -> typer.Exit:
    """Print ``error MESSAGE`` on stderr; the caller raises the returned Exit (status 1)."""
    error(message)
    return typer.Exit(1)


def note(label: str, message: object, style: str = "yellow") -> None:
    """A non-fatal line on stderr (``skipped ...``, ``note ...``) in the same style as errors."""
    err.print(Text.assemble((label, style), " ", str(message)), highlight=False, soft_wrap=True)


def load(path: Path) -> CoEConfig:
    """The registry at ``path``, or every problem printed (file:line: key.path: why) and exit 1."""
    from coe.config import load_config
    from coe.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            error(issue)
        raise typer.Exit(1) from None


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the expert processes."""
    signal.signal(signal.SIGTERM, _exit)


def _exit(*_: object) -> NoReturn:
    sys.exit(128 + signal.SIGTERM)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
