"""Shared by the command modules (this module registers no command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="COE_CONFIG", help="Registry file (experts.yaml)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DEFAULT_CONFIG = Path("experts.yaml")


def fail(message: str) -> typer.Exit:
    """Print ``error MESSAGE`` on stderr; the caller raises the returned Exit (status 1)."""
    typer.echo(f"error {message}", err=True)
    return typer.Exit(1)
