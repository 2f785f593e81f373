"""Start-up stays light: `import coe` and `coe --help` never load torch or the other heavy stacks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

# The README's list (torch, sentence-transformers, faiss, scikit-learn, litellm, fastapi, onnxruntime,
# ray), what they bring along, and the optional stacks CoE also imports only where it uses them.
README_LIST = (
    "torch",
    "sentence_transformers",
    "faiss",
    "sklearn",
    "litellm",
    "fastapi",
    "onnxruntime",
    "ray",
)
HEAVY = (
    *README_LIST,
    *("transformers", "tokenizers", "numpy", "scipy", "starlette", "uvicorn", "prometheus_client", "onnx"),
    *("openai", "matplotlib", "llama_cpp", "vllm", "opentelemetry", "redis", "presidio_analyzer"),
)


@pytest.mark.parametrize("module", README_LIST)
def test_the_readme_list_is_installed_here_so_the_checks_below_can_fail(module: str) -> None:
    """The dev extras install every one of them: a library that is absent could not be caught."""
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed: make venv"


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
