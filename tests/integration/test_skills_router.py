"""The skills router with the real MiniLM encoder over hand-built profiles (no LLM on most tests;
the annotator's failure path uses the stub server, its real path a real llama.cpp expert)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe import CoE, Request
from coe.cli import app
from coe.config import load_config
from coe.errors import ConfigError
from routers.skills.profile import ProfileError
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.skills_fixtures import SCORES, hand_profile, skills_registry
from tests.support.stub_server import stub_server

CODE = "Write a Python function that sorts a list of numbers with merge sort"
FOOD = "How long should I bake a loaf of banana bread, and at what oven temperature?"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return skills_registry(tmp_path_factory.mktemp("skills"))


@pytest.fixture(scope="module")
def coe(registry: Path) -> CoE:
    return CoE.from_yaml(registry)


def test_code_prompt_recruits_the_coder_with_its_evidence(coe: CoE) -> None:
    [d] = coe.route(CODE)
    assert d.router == "skills"
    assert d.recruited == ["coder"] and d.fanout == 1
    assert d.experts == ["coder", "general"]  # recruited, then the fallback
    assert "python programming" in d.details["keywords"]
    assert d.details["keywords_from"] == "embedding" and d.details["why"] == "no annotator configured"
    assert d.details["local"]["coder"] > 0 > d.details["local"]["general"]
    assert set(d.details["global"]) == {"coder", "general"}
    assert d.weights == {"coder": 1.0}
    assert "recruited coder" in d.reason and "python programming" in d.reason


def test_food_prompt_recruits_the_generalist(coe: CoE) -> None:
    [d] = coe.route(FOOD)
    assert d.recruited == ["general"]
    assert "cooking" in d.details["keywords"]


def test_dynamic_k_recruits_both_when_the_weight_is_shared(tmp_path: Path) -> None:
    # Both experts score on every keyword; top_p 0.9 needs both, top_p 0.3 one.
    even = {name: {w: 2.0 for w in SCORES["coder"]} for name in SCORES}
    config = load_config(DEFAULT_REGISTRY)
    wide = skills_registry(tmp_path, "k: dynamic\n    top_p: 0.9", profile=hand_profile(config, even))
    [d] = CoE.from_yaml(wide).route(CODE)
    assert d.fanout == 2 and sorted(d.recruited) == ["coder", "general"]
    assert d.details["k"].startswith("dynamic k=2")
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    [d] = CoE.from_yaml(
        skills_registry(narrow, "k: dynamic\n    top_p: 0.3", profile=hand_profile(config, even))
    ).route(CODE)
    assert d.fanout == 1


def test_batch_routing_matches_one_by_one(coe: CoE) -> None:
    batch = coe.route([CODE, FOOD])
    single = [coe.route(p)[0] for p in (CODE, FOOD)]
    assert [d.experts for d in batch] == [d.experts for d in single]


def test_profile_built_with_another_registry_is_refused(tmp_path: Path) -> None:
    config = load_config(DEFAULT_REGISTRY)
    profile = hand_profile(config)
    profile.experts["coder"].fingerprint = "0123456789abcdef"  # measured for another model
    path = skills_registry(tmp_path, profile=profile)
    with pytest.raises(ProfileError, match="built with another registry") as info:
        CoE.from_yaml(path).route(CODE)
    assert "'coder' changed since profiling" in str(info.value) and "coe profile" in str(info.value)


def test_profile_naming_an_expert_the_registry_lacks_is_refused(tmp_path: Path) -> None:
    profile = hand_profile(load_config(DEFAULT_REGISTRY))
    profile.experts["ghost"] = profile.experts["general"].model_copy()
    result = CliRunner().invoke(app, ["route", CODE, "-c", str(skills_registry(tmp_path, profile=profile))])
    assert result.exit_code == 1
    assert "'ghost' is in the profile but not in the registry" in result.output
    assert "Traceback" not in result.output


def test_expert_missing_from_the_profile_is_only_the_fallback(tmp_path: Path) -> None:
    extra = "  remote:\n    endpoint: http://127.0.0.1:9/v1\n    retries: 0\n"
    path = skills_registry(tmp_path, "k: 2\n    fallback: remote", extra_experts=extra)
    for prompt in (CODE, FOOD, "Tell me about the history of Rome"):
        [d] = CoE.from_yaml(path).route(prompt)
        assert "remote" not in d.recruited
        assert d.experts[-1] == "remote"
        assert d.details["unprofiled"] == ["remote"]


def test_missing_profile_file_names_the_command_that_builds_it(tmp_path: Path) -> None:
    path = skills_registry(tmp_path)
    (tmp_path / "profile.json").unlink()
    result = CliRunner().invoke(app, ["route", CODE, "-c", str(path)])
    assert (
        result.exit_code == 1 and "no such profile file" in result.output and "coe profile" in result.output
    )


@pytest.mark.parametrize(
    ("skills", "message"),
    [
        ("k: dynamic\n    annotator: nobody", "router.skills.annotator: unknown expert 'nobody'"),
        ("k: dynamic\n    min_k: 3\n    max_k: 2", "min_k (3) must not exceed max_k (2)"),
        ("k: dynamic\n    top_k: 2", "router.skills.top_k: unknown key 'top_k'"),
    ],
)
def test_bad_skills_block_is_a_config_error_naming_the_key(tmp_path: Path, skills: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(skills_registry(tmp_path, skills))
    assert message in str(info.value)


def test_skills_router_without_a_skills_block_is_refused(tmp_path: Path) -> None:
    experts, _, _ = DEFAULT_REGISTRY.read_text().partition("router:")
    (tmp_path / "experts.yaml").write_text(experts + "router:\n  type: skills\n")
    with pytest.raises(ConfigError, match=r"router\.skills: the skills router needs a skills block"):
        load_config(tmp_path / "experts.yaml")


def test_category_settings_under_a_skills_router_are_unknown_keys_of_that_router(tmp_path: Path) -> None:
    """``router:`` is validated against the model its ``type`` names, so another router's settings
    are refused by key path, with the keys this router takes."""
    text = DEFAULT_REGISTRY.read_text().replace("type: category", "type: skills")
    (tmp_path / "experts.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "experts.yaml")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith("  classifier:"))
    want = "router.classifier: unknown key 'classifier'; expected one of: type, sessions, skills, fallback"
    assert f"experts.yaml:{line}: {want}" in str(info.value)


def test_cli_route_json_shows_the_recruitment_and_starts_nothing(registry: Path) -> None:
    result = CliRunner().invoke(app, ["route", FOOD, "-c", str(registry), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["expert"] == "general" and data["fanout"] == 1
    assert data["details"]["keywords_from"] == "embedding"


async def test_annotator_without_usable_keywords_falls_back_to_the_embedding_path(tmp_path: Path) -> None:
    with stub_server("ok", text="!!! ???") as (url, state):
        extra = f"  scribe:\n    endpoint: {url}\n    retries: 0\n"
        path = skills_registry(
            tmp_path, "k: dynamic\n    annotator: scribe\n    samples: 3", extra_experts=extra
        )
        async with CoE.from_yaml(path) as coe:
            [d] = await coe.router.aroute([Request.from_input(CODE)], coe.call_expert)  # type: ignore[attr-defined]
    assert state.calls == 3
    assert d.details["keywords_from"] == "embedding"
    assert "annotator 'scribe' returned no usable keywords in 3 sample(s)" in d.details["why"]
    assert d.details["annotator"]["samples"] == [[], [], []]
    assert d.recruited == ["coder"]


async def test_failing_annotator_falls_back_and_the_trace_says_why(tmp_path: Path) -> None:
    with stub_server("500") as (url, _):
        extra = f"  scribe:\n    endpoint: {url}\n    retries: 0\n"
        path = skills_registry(
            tmp_path, "k: dynamic\n    annotator: scribe\n    samples: 2", extra_experts=extra
        )
        async with CoE.from_yaml(path) as coe:
            [d] = await coe.router.aroute([Request.from_input(FOOD)], coe.call_expert)  # type: ignore[attr-defined]
    assert d.details["keywords_from"] == "embedding" and "HTTP 500" in d.details["why"]
    assert d.recruited == ["general"]


async def test_annotator_keywords_are_mapped_onto_the_vocabulary(tmp_path: Path) -> None:
    reply = "Keywords: Python, sorting algorithms, recursion"
    with stub_server("ok", text=reply) as (url, _):
        extra = f"  scribe:\n    endpoint: {url}\n    retries: 0\n"
        path = skills_registry(tmp_path, "k: dynamic\n    annotator: scribe", extra_experts=extra)
        async with CoE.from_yaml(path) as coe:
            [d] = await coe.router.aroute([Request.from_input(CODE)], coe.call_expert)  # type: ignore[attr-defined]
    assert d.details["keywords_from"] == "annotator"
    assert d.details["mapped_from"]["python programming"] == "python"
    assert d.details["mapped_from"]["algorithms"] == "sorting algorithms"
    assert d.recruited == ["coder"]
