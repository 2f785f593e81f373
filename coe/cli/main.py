"""The ``coe`` command: the root app and the list of command modules.

Imports stay light at module level so ``coe --help`` answers at once: each command module keeps its
heavy imports (the orchestrator, numpy, torch, FastAPI, Ray) inside its command functions.
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer

app = typer.Typer(
    help="CoE: route each prompt to the right expert LLM, answer it, and show why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)``; the order is the order of `coe --help`.
COMMAND_MODULES = (
    "ask",
    "experts",
    "sessions",
    "traces",
    "batch",
    "serve",
    "deploy",
    "index",
    "router_tools",
    "finetune",
    "train_cost_router",
    "train_gate",
    "profile",
    "fit_map",
    "eval",
    "eval_gate",
    "eval_outcomes",
    "eval_recruit",
    "cache",
    "signals",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"coe {version('coe')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("coe (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """CoE: route each prompt to the right expert LLM, answer it, and show why."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"coe.cli.{_name}").register(app)


def main() -> None:  # pragma: no cover - console entry for `python -m coe`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
