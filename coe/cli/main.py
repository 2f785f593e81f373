"""The ``coe`` command: the root app and the list of command modules.

Imports stay light at module level so ``coe --help`` answers at once: each command module keeps its
heavy imports (the orchestrator, numpy, torch, FastAPI, Ray) inside its command functions.
"""

from __future__ import annotations

import importlib
import os

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

for _name in COMMAND_MODULES:
    importlib.import_module(f"coe.cli.{_name}").register(app)


def main() -> None:  # pragma: no cover - console entry for `python -m coe`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
