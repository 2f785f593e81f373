"""``coe eval recruit`` on a small hand-written RouterBench-format fixture (real MiniLM, no LLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.evaluation.outcomes import ROUTERBENCH_MODELS
from tests.support.files import write_jsonl

GPT4, CLAUDE2, MIXTRAL = "gpt-4-1106-preview", "claude-v2", "mistralai/mixtral-8x7b-chat"
THINGS = ["iron", "water", "air", "copper", "glass", "wood", "steel", "ice", "sand", "oil", "gold", "salt"]
TASKS = [
    "reverses a string", "sums a list of numbers", "counts the vowels in a string",
    "returns the largest element",
    "checks whether a number is prime", "merges two sorted lists", "removes duplicates from a list",
    "computes the factorial of n", "converts Celsius to Fahrenheit", "flattens a nested list",
    "finds the median of a list", "capitalises every word",
]  # fmt: skip


def row(i: int, science: bool) -> dict[str, object]:
    """Science: GPT-4 right, Mixtral right on three of four, the rest answer A (wrong). Code: only
    Claude 2 is right, and no answer is a letter, so the top-weighted model's outcome decides."""
    if science:
        prompt = (
            f"In physics, which property of {THINGS[i]} changes most when it is heated?\n"
            "A) mass\nB) volume\nC) charge\nD) colour"
        )
        right = {GPT4: True, MIXTRAL: i % 4 != 0}
        response = {m: "B" if right.get(m) else "A" for m in ROUTERBENCH_MODELS}
    else:
        prompt = f"Write a Python function that {TASKS[i]}."
        right = {CLAUDE2: True}
        response = {m: f"def solution_{i}(x):\n    return x  # by {m}" for m in ROUTERBENCH_MODELS}
    out: dict[str, object] = {
        "sample_id": f"{'sci' if science else 'code'}-{i}",
        "prompt": repr([prompt]),
        "eval_name": "physics" if science else "code",
    }
    for m in ROUTERBENCH_MODELS:
        out[m] = 1.0 if right.get(m) else 0.0
        out[f"{m}|model_response"] = repr([response[m]])
        out[f"{m}|total_cost"] = 0.01 if m == GPT4 else 0.001
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("routerbench")
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    write_jsonl(train, [row(i, s) for i in range(8) for s in (True, False)])
    return train, write_jsonl(test, [row(i, s) for i in range(8, 12) for s in (True, False)])


def run(files: tuple[Path, Path], *extra: str) -> dict:  # type: ignore[type-arg]
    train, test = files
    args = ["eval", "recruit", "--format", "routerbench", "--train", str(train), "--test", str(test)]
    result = CliRunner().invoke(app, [*args, "--aggregator", "vote", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_k1_recruits_the_right_specialist_for_each_task(files: tuple[Path, Path]) -> None:
    data = run(files, "--k", "1")
    assert data["n_train"] == 16 and data["n_test"] == 8
    assert data["accuracy"] == 1.0 and data["mean_k"] == 1.0
    assert data["best_single"]["accuracy"] == 0.5 and data["best_single"]["name"] in {GPT4, CLAUDE2}
    assert data["oracle"]["accuracy"] == 1.0
    assert data["per_task"]["physics"]["accuracy"] == 1.0 and data["per_task"]["code"]["accuracy"] == 1.0
    assert data["decided_by_vote"] == 0.5  # code answers cannot be voted on: the top model's outcome counts


def test_k3_recruits_only_suitable_models_and_votes(files: tuple[Path, Path]) -> None:
    data = run(files, "--k", "3")
    # physics: GPT-4 and Mixtral have positive scores, code: Claude 2 alone; nobody else is suitable
    assert data["per_task"]["physics"]["mean_k"] == 2.0 and data["per_task"]["code"]["mean_k"] == 1.0
    assert data["accuracy"] == 1.0  # Mixtral's wrong answer ties with GPT-4's right one: weight decides
    assert data["k_histogram"] == {"1": 4, "2": 4}


def test_dynamic_k_reports_its_settings(files: tuple[Path, Path]) -> None:
    data = run(files, "--k", "dynamic", "--top-p", "0.5", "--max-k", "3")
    assert data["k"] == "dynamic" and data["top_p"] == 0.5 and 1.0 <= data["mean_k"] <= 2.0
    assert data["accuracy"] == 1.0
    assert data["cost_unit"] == "usd_per_query" and data["cost_per_prompt"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "0"], "expected a positive number or 'dynamic'"),
        (["--aggregator", "synthesize"], "only 'vote' replays offline"),
        (["--min-k", "3", "--max-k", "2"], "--min-k (3) must not exceed --max-k (2)"),
    ],
)
def test_bad_options_exit_with_a_message(files: tuple[Path, Path], extra: list[str], message: str) -> None:
    train, test = files
    args = ["eval", "recruit", "--train", str(train), "--test", str(test), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and message in result.output


def test_missing_file_is_named(files: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", "recruit", "--train", str(files[0]), "--test", str(tmp_path / "no.jsonl")]
    )
    assert result.exit_code == 1 and "no.jsonl: no such file" in result.output
