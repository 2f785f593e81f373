"""Command groups that live in their own modules, so cli.py stays small.

Each module here defines ``register(app: typer.Typer) -> None`` and keeps heavy imports inside its
command functions (``coe --help`` imports every module in this package).
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):  # helpers, not commands
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
