"""The skills router's annotator with a real llama.cpp expert: sampled keywords, kept when they
recur, mapped onto the profile; and, when the annotator names none, the embedding path."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe import CoE
from tests.support.skills_fixtures import VOCABULARY, skills_registry
from tests.support.stub_server import stub_server

pytestmark = pytest.mark.e2e
PROMPT = "Write a Python function that returns the sum of a list"


def test_real_annotator_is_sampled_and_the_trace_says_which_keywords_decided(tmp_path: Path) -> None:
    """The coder annotates with a fixed sampling seed, so its samples agree and this test always takes
    the annotator path (unseeded, SmolLM2-135M names no keyword twice about half the time)."""
    path = skills_registry(tmp_path, "k: dynamic\n    annotator: coder\n    samples: 3")
    seeded = path.read_text().replace("max_tokens: 256}", "max_tokens: 256, seed: 7}", 1)
    assert seeded != path.read_text()
    path.write_text(seeded)
    with CoE.from_yaml(path) as coe:
        answer = coe.ask(PROMPT, max_tokens=16)
    d = answer.trace.decision
    assert d is not None and d.router == "skills"
    note = d.details["annotator"]
    assert note["expert"] == "coder" and len(note["samples"]) == 3 and not note["errors"]
    assert d.details["keywords_from"] == "annotator", d.details["why"]
    assert note["kept"] and all(sum(k in s for s in note["samples"]) >= 2 for k in note["kept"])
    assert set(d.details["keywords"]) <= set(VOCABULARY)
    assert set(d.details["mapped_from"]) == set(d.details["keywords"])
    assert all(src in note["kept"] for src in d.details["mapped_from"].values())
    assert answer.expert in d.recruited and answer.text.strip()


def test_an_annotator_that_names_no_keyword_falls_back_to_the_embedding_path(tmp_path: Path) -> None:
    """``mute`` declares no json_schema: it is asked without the keyword schema (and the real coder,
    which enforces schemas, with it: see the test above)."""
    with stub_server("ok", text="???") as (url, state):
        extra = f"  mute:\n    endpoint: {url}\n    retries: 0\n    capabilities: [tools]\n"
        path = skills_registry(
            tmp_path, "k: dynamic\n    annotator: mute\n    samples: 3", extra_experts=extra
        )
        with CoE.from_yaml(path) as coe:
            answer = coe.ask(PROMPT, max_tokens=16)
    d = answer.trace.decision
    assert d is not None and state.calls == 3
    assert all("response_format" not in body for body in state.bodies)
    assert d.details["keywords_from"] == "embedding" and d.details["annotator"]["samples"] == [[], [], []]
    assert "annotator 'mute' returned no usable keywords in 3 sample(s)" in d.details["why"]
    assert "python programming" in d.details["keywords"]  # the prompt's own nearest vocabulary entries
    assert answer.expert in d.recruited and answer.text.strip()
