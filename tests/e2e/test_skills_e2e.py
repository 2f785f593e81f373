"""The skills router's annotator with a real llama.cpp expert: sampled keywords, kept when they
recur, mapped onto the profile; or, when the small model names none twice, the embedding path."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe import CoE
from tests.support.skills_fixtures import VOCABULARY, skills_registry

pytestmark = pytest.mark.e2e


def test_real_annotator_is_sampled_and_the_trace_says_which_keywords_decided(tmp_path: Path) -> None:
    path = skills_registry(tmp_path, "k: dynamic\n    annotator: coder\n    samples: 3")
    with CoE.from_yaml(path) as coe:
        answer = coe.ask("Write a Python function that returns the sum of a list", max_tokens=16)
    d = answer.trace.decision
    assert d is not None and d.router == "skills"
    note = d.details["annotator"]
    assert note["expert"] == "coder" and len(note["samples"]) == 3 and not note["errors"]
    assert set(d.details["keywords"]) <= set(VOCABULARY)
    if d.details["keywords_from"] == "annotator":
        assert note["kept"] and set(d.details["mapped_from"]) == set(d.details["keywords"])
        assert all(src in note["kept"] for src in d.details["mapped_from"].values())
    else:
        assert "returned no usable keywords" in d.details["why"]
    assert answer.expert in d.recruited and answer.text.strip()
