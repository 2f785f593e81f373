"""Start-up stays light: `import coe` and `coe --help` never load torch or the other heavy stacks."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "sentence_transformers", "faiss", "litellm", "llama_cpp", "transformers", "numpy")


def test_import_coe_pulls_in_no_heavy_library() -> None:
    code = f"import coe, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_pulls_in_no_heavy_library_and_starts_nothing() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from coe.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_surface_is_reexported() -> None:
    import coe

    for name in (
        "CoE",
        "Answer",
        "Trace",
        "RouteDecision",
        "Router",
        "Aggregator",
        "load_config",
        "ConfigError",
    ):
        assert hasattr(coe, name), name
