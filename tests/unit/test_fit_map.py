"""`coe fit-map`: the exact category -> expert map under a budget, checked against brute force."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from coe.category_map import CategoryStats, Frontier
from coe.cli import app
from coe.evaluation.outcomes import load_outcomes
from routers.category.fit_map import category_stats
from tests.support.files import write_jsonl

runner = CliRunner()


def _brute_force(stats: CategoryStats, budget: float | None) -> float | None:
    best = None
    for combo in itertools.product(range(len(stats.experts)), repeat=len(stats.categories)):
        q = sum(s * stats.quality[c][e] for c, (s, e) in enumerate(zip(stats.share, combo, strict=True)))
        k = sum(s * stats.cost[c][e] for c, (s, e) in enumerate(zip(stats.share, combo, strict=True)))
        if (budget is None or k <= budget * (1 + 1e-9)) and (best is None or q > best):
            best = q
    return best


def _stats(rng: np.random.Generator, cats: int, experts: int) -> CategoryStats:
    count = rng.integers(1, 30, cats)
    return CategoryStats(
        categories=[f"c{i}" for i in range(cats)],
        experts=[f"e{j}" for j in range(experts)],
        share=(count / count.sum()).tolist(),
        count=count.tolist(),
        quality=rng.random((cats, experts)).round(2).tolist(),
        cost=(rng.random((cats, experts)) * 10).round(1).tolist(),
    )


def test_frontier_matches_brute_force_for_every_budget() -> None:
    rng = np.random.default_rng(3)
    for _ in range(25):
        stats = _stats(rng, cats=4, experts=3)
        frontier = Frontier(stats)
        for budget in [None, *rng.uniform(0, 10, 5).tolist()]:
            fitted = frontier.best(budget)
            expected = _brute_force(stats, budget)
            if expected is None:
                assert fitted is None
                continue
            assert fitted is not None
            assert fitted.expected_quality == pytest.approx(expected)
            if budget is not None:
                assert fitted.average_cost <= budget + 1e-9


def test_beats_a_greedy_upgrade_order() -> None:
    """Upgrading 'b' first has the best gain per cost (0.3 for 2) but then 'a' (0.5 for 4) no longer
    fits a budget of 2 per prompt on average; the optimum upgrades 'a' alone."""
    stats = CategoryStats(
        categories=["a", "b"],
        experts=["small", "big"],
        share=[0.5, 0.5],
        count=[1, 1],
        quality=[[0.2, 0.7], [0.5, 0.8]],
        cost=[[0.0, 4.0], [0.0, 2.0]],
    )
    fitted = Frontier(stats).best(2.0)
    assert fitted is not None
    assert {c: m.expert for c, m in fitted.categories.items()} == {"a": "big", "b": "small"}
    assert fitted.expected_quality == pytest.approx(0.6)
    assert fitted.average_cost == pytest.approx(2.0)


def _outcomes(path: Path) -> Path:
    """Two categories; 'big' (8B) is needed for math, 'small' (1B) is as good for chat."""
    rows = []
    for i in range(6):
        rows.append(
            {
                "prompt": f"math question {i}",
                "category": "math",
                "expert": "small",
                "score": i < 2,
                "cost": 1.0,
            }
        )
        rows.append(
            {"prompt": f"math question {i}", "category": "math", "expert": "big", "score": True, "cost": 8.0}
        )
    for i in range(4):
        rows.append(
            {"prompt": f"chat message {i}", "category": "chat", "expert": "small", "score": 1, "cost": 1.0}
        )
        rows.append(
            {"prompt": f"chat message {i}", "category": "chat", "expert": "big", "score": 1, "cost": 8.0}
        )
    return write_jsonl(path, rows)


def test_category_stats_from_our_format(tmp_path: Path) -> None:
    stats = category_stats(load_outcomes("coe", [_outcomes(tmp_path / "o.jsonl")]))
    assert stats.categories == ["chat", "math"] and stats.experts == ["big", "small"]
    assert stats.share == pytest.approx([0.4, 0.6])
    assert stats.quality[1] == pytest.approx([1.0, 2 / 6])


def test_cli_writes_a_categories_fragment_and_report(tmp_path: Path) -> None:
    data = _outcomes(tmp_path / "o.jsonl")
    out = tmp_path / "map.yaml"
    result = runner.invoke(app, ["fit-map", str(data), "--max-cost", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["router"]["categories"] == {"chat": {"expert": "small"}, "math": {"expert": "big"}}
    report = doc["report"]
    assert report["expected_quality"] == pytest.approx(1.0)
    assert report["average_cost"] == pytest.approx(0.4 * 1 + 0.6 * 8)  # share x size of its expert
    assert report["per_category"]["math"]["share"] == pytest.approx(0.6)
    # A tighter budget: math must go to 'small' too.
    tight = runner.invoke(app, ["fit-map", str(data), "--max-cost", "2", "--json"])
    assert tight.exit_code == 0, tight.output
    report = json.loads(tight.output)
    assert report["categories"]["math"]["expert"] == "small"
    assert report["expected_quality"] == pytest.approx(0.4 + 0.6 * 2 / 6)
    # Fitted on one side, scored on the other: the same map, measured on prompts it never saw.
    held = runner.invoke(app, ["fit-map", str(data), "--test", str(data), "--test-fraction", "0.5", "--json"])
    assert held.exit_code == 0, held.output
    report = json.loads(held.output)
    _, test_side = load_outcomes("coe", [data]).split(0.5)
    assert report["test"]["prompts"] == len(test_side) > 0
    # No budget: math goes to 'big', always right, and both are right on chat.
    assert report["categories"]["math"]["expert"] == "big"
    assert report["test"]["quality"] == pytest.approx(1.0)


def test_cli_budget_on_active_parameters_from_the_registry(tmp_path: Path) -> None:
    data = _outcomes(tmp_path / "o.jsonl")
    registry = tmp_path / "experts.yaml"
    registry.write_text(
        "version: 1\n"
        "experts:\n"
        "  small: {endpoint: 'http://127.0.0.1:9/v1', params_b: 0.5}\n"
        "  big: {endpoint: 'http://127.0.0.1:9/v1', params_b: 7}\n"
        "router:\n"
        "  categories:\n"
        "    chat: {expert: small, examples: [hello]}\n"
    )
    ok = runner.invoke(app, ["fit-map", str(data), "-c", str(registry), "--max-params", "5", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert report["categories"]["math"]["expert"] == "big"
    assert report["average_active_params_b"] == pytest.approx(0.4 * 0.5 + 0.6 * 7)
    too_small = runner.invoke(app, ["fit-map", str(data), "-c", str(registry), "--max-params", "0.1"])
    assert too_small.exit_code == 1
    assert "no map fits params budget 0.1" in too_small.output and "0.5" in too_small.output
    no_sizes = runner.invoke(app, ["fit-map", str(data), "--max-params", "5"])
    assert no_sizes.exit_code == 1 and "params_b" in no_sizes.output


def test_cli_reports_bad_rows_by_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a", "expert": "x", "score": 1, "cost": 1}\n'
        '{"prompt": "a", "expert": "y", "score": 2, "cost": 1}\n'
        '{"prompt": "b", "expert": "x", "cost": 1}\n'
    )
    result = runner.invoke(app, ["fit-map", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: 'score' must be a number in [0, 1]" in result.output
    assert f"{bad}:3: missing field 'score'" in result.output
    assert "Traceback" not in result.output
