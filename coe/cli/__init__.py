"""The ``coe`` command line (``coe.cli:app``). One module per command group; ``common`` holds what
they share (options, output, the error style, loading the registry, SIGTERM)."""

from coe.cli.main import app, main

__all__ = ["app", "main"]
