"""Shared by the command modules (this module registers no command)."""

from __future__ import annotations

import typer


def fail(message: str) -> typer.Exit:
    """Print ``error MESSAGE`` on stderr; the caller raises the returned Exit (status 1)."""
    typer.echo(f"error {message}", err=True)
    return typer.Exit(1)
