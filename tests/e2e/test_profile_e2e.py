"""``coe profile`` with the real llama.cpp experts on a tiny hand-written validation file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe import CoE
from coe.cli import app
from coe.config import load_config
from routers.skills.profile import expert_fingerprint, load_profile, registry_fingerprint
from tests.support.files import write_jsonl
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.skills_fixtures import QUESTIONS, skills_registry


@pytest.mark.e2e
def test_profile_runs_every_expert_and_writes_a_usable_profile(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "val.jsonl", QUESTIONS)
    out = tmp_path / "profile.json"
    args = ["profile", str(data), "--grader", "mc", "-c", str(DEFAULT_REGISTRY), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "16", "--aggregator-questions", "2", "--json"])
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    config = load_config(DEFAULT_REGISTRY)
    assert set(profile.experts) == {"coder", "general"}
    for name, skills in profile.experts.items():
        assert skills.fingerprint == expert_fingerprint(config.experts[name])
        assert skills.n == 4 and set(skills.categories) == {"arithmetic", "programming"}
        assert all(abs(v) <= 4 for v in skills.scores.values())  # +1/-1 per question at most
    assert profile.registry_fingerprint == registry_fingerprint(config)
    assert {"arithmetic", "programming"} <= set(profile.vocabulary)
    assert profile.aggregator.expert in {"coder", "general"} and profile.aggregator.reason
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["questions"] == 4 and set(summary["experts"]) == {"coder", "general"}
    # the profile is accepted by the skills router of the same registry
    registry = skills_registry(tmp_path, profile=profile)
    [decision] = CoE.from_yaml(registry).route("What is 7 + 8?")
    assert decision.router == "skills" and decision.recruited
