"""The experts.yaml reference page is generated from the models: every field has a description, and
the committed page is what the models say today (regenerate it with the command in its header)."""

from __future__ import annotations

from coe.config.reference import missing_descriptions, render
from tests.support.paths import ROOT

PAGE = ROOT / "docs" / "reference" / "experts-yaml.md"


def test_every_registry_field_has_a_description() -> None:
    assert missing_descriptions() == []


def test_the_reference_page_is_not_stale() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/reference/experts-yaml.md is stale: run `.venv/bin/python -m coe.config.reference > "
        "docs/reference/experts-yaml.md`"
    )


def test_the_page_shows_each_strategys_own_settings() -> None:
    page = render()
    assert "## `router` (type: cost)" in page and "## `aggregator` (type: vote)" in page
    assert "| `classifier` |" in page and "| `answer` |" in page
    assert "## `experts.NAME.serve` (engine: vllm)" in page
