"""What a new user meets first on the command line: the version, flags checked by name, the cache
command saying which block to add, and `coe serve --help` showing its defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from tests.support.paths import DEFAULT_REGISTRY


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("coe ") and result.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize(("flag", "value"), [("--max-tokens", "0"), ("--temperature", "-1")])
def test_ask_checks_its_numeric_flags_by_name(flag: str, value: str) -> None:
    result = CliRunner().invoke(app, ["ask", "hi", "-c", str(DEFAULT_REGISTRY), flag, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.output


def test_cache_stats_without_a_cache_block_says_which_block_to_add(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["cache", "stats", "-c", str(DEFAULT_REGISTRY)])
    assert result.exit_code == 1
    assert (
        "add a signals.cache block" in result.output and "signals: {cache: {store: sqlite}}" in result.output
    )


def test_serve_help_shows_the_defaults_of_the_server_settings() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for text in ("default: '127.0.0.1'", "default: 8000", "default: 1000000", "default: 4096", "default: 64"):
        assert text in result.output, text


def test_tables_written_to_a_pipe_are_not_cut(tmp_path: Path) -> None:
    name = "an_expert_with_a_name_much_longer_than_any_terminal_column_" + "x" * 60
    path = tmp_path / "experts.yaml"
    path.write_text(
        f"version: 1\nexperts:\n  {name}: {{endpoint: 'http://127.0.0.1:9/v1/{'long/' * 20}'}}\n"
        f"router:\n  categories:\n    any: {{expert: {name}, examples: [hi]}}\n"
    )
    result = CliRunner().invoke(app, ["experts", "list", "-c", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert name in result.stdout and "long/" * 20 in result.stdout and "…" not in result.stdout
