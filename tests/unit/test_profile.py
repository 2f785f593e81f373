"""``coe profile``'s bad-input paths (they start no expert) and the profile's fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from tests.support.files import write_jsonl
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.skills_fixtures import QUESTIONS


def test_a_row_without_a_gold_answer_is_reported_by_file_and_line(tmp_path: Path) -> None:
    rows = [QUESTIONS[0], {"question": "What is 1 + 1?", "choices": ["1", "2"]}]
    data = write_jsonl(tmp_path / "val.jsonl", rows)
    result = CliRunner().invoke(
        app, ["profile", str(data), "-c", str(DEFAULT_REGISTRY), "-o", str(tmp_path / "p")]
    )
    assert result.exit_code == 1
    assert f"{data}:2: no gold answer field" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grader", "fuzzy"], "--grader: expected one of mc, number, exact"),
        (["--experts", "coder,nobody"], "unknown expert(s) nobody"),
        (["--annotator", "ghost"], "unknown expert(s) ghost"),
    ],
)
def test_bad_options_fail_with_one_message(tmp_path: Path, extra: list[str], message: str) -> None:
    data = write_jsonl(tmp_path / "val.jsonl", QUESTIONS)
    result = CliRunner().invoke(app, ["profile", str(data), "-c", str(DEFAULT_REGISTRY), *extra])
    assert result.exit_code == 1 and message in result.output


def test_a_gold_answer_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "val.jsonl", [{"question": "How many?", "answer": "many"}])
    result = CliRunner().invoke(
        app, ["profile", str(data), "--grader", "number", "-c", str(DEFAULT_REGISTRY)]
    )
    assert result.exit_code == 1 and f"{data}:1: 'answer' is not a number answer: 'many'" in result.output


def test_items_are_graded_with_the_grader_asked_for(tmp_path: Path) -> None:
    from routers.skills.qa import grade, read_items

    data = write_jsonl(tmp_path / "val.jsonl", [{"question": "What is 9 + 9?", "answer": "#### 18"}])
    [item] = read_items([data], "number")
    assert item.grader == "number"
    assert grade(item.grader, "9 + 9 = 18, so the answer is 18.", item.gold)
    assert not grade(item.grader, "The answer is 17.", item.gold)
