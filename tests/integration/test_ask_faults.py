"""Faults of the library and the command line that need no running model: an expert that cannot be
reached, a model file that is not there, an expert that does not exist, and `coe route`, which must
start no expert at all. The default registry's router and encoder decide; no LLM runs (the answering
end to end tests are in tests/e2e/test_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coe import AllExpertsFailed, CoE, ExpertError
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.procs import run_coe
from tests.support.registries import default_registry_with

SHORT = {"max_tokens": 48, "temperature": 0.0}


def test_dead_endpoint_expert_error_names_the_expert(tmp_path: Path) -> None:
    path = default_registry_with(
        tmp_path,
        "  remote:\n    endpoint: http://127.0.0.1:9/v1\n    retries: 0\n",
        "    code: {expert: remote, examples: ['write a python function']}\n"
        "    chat: {expert: remote, examples: ['tell me a story']}\n",
    )
    with CoE.from_yaml(path) as coe, pytest.raises(AllExpertsFailed) as info:
        coe.ask("Write a Python function that reverses a string", **SHORT)
    assert list(info.value.errors) == ["remote"]
    assert "cannot reach http://127.0.0.1:9/v1" in info.value.errors["remote"]
    assert "remote" in str(info.value)


def test_missing_model_file_reports_the_expert_and_path(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    path.write_text(
        "version: 1\nexperts:\n  local:\n    serve: {engine: llamacpp, gguf: missing.gguf}\n"
        "router:\n  categories:\n    any: {expert: local, examples: ['hello']}\n"
    )
    with CoE.from_yaml(path) as coe, pytest.raises(AllExpertsFailed) as info:
        coe.ask("hello", **SHORT)
    assert f"model file not found: {tmp_path / 'missing.gguf'}" in info.value.errors["local"]


def test_unknown_pinned_expert() -> None:
    with CoE.from_yaml(DEFAULT_REGISTRY) as coe, pytest.raises(ExpertError, match="no such expert"):
        coe.ask("hi", expert="nobody")


def test_cli_route_starts_no_expert(tmp_path: Path) -> None:
    # The llama-server CoE would run only records that it was started.
    started = tmp_path / "started"
    fake = tmp_path / "llama-server"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{started}"\nexit 1\n')
    fake.chmod(0o755)
    result = run_coe(
        "route",
        "Write a Python function that reverses a string",
        "--json",
        env={"COE_LLAMA_SERVER": str(fake)},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"expert", "category", "confidence", "scores"} <= set(data)
    assert data["expert"] == "coder"
    assert not started.exists()


def test_cli_ask_writes_the_answer_as_written_and_says_when_a_fallback_answered(tmp_path: Path) -> None:
    """The chosen expert is down, another one answers: the answer goes to stdout untouched (a code line
    longer than any terminal stays one line) and one line on stderr names the expert that failed."""
    from tests.support.stub_server import stub_server

    answer = "```python\n" + "x = [" + ", ".join(str(i) for i in range(80)) + "]\n```\n\n  indented  line"
    with stub_server("ok", text=answer) as (url, _):
        path = tmp_path / "experts.yaml"
        path.write_text(
            "version: 1\nexperts:\n  broken: {endpoint: 'http://127.0.0.1:9/v1', retries: 0}\n"
            f"  general: {{endpoint: '{url}'}}\nrouter:\n  categories:\n"
            "    code: {expert: broken, examples: ['write a python function', 'fix this bug in my code']}\n"
            "    chat: {expert: general, examples: ['tell me a story', 'how are you today']}\n"
            "  fallback: {expert: general, min_confidence: 0, min_similarity: 0}\n"
        )
        result = run_coe(
            "ask", "Write a Python function that reverses a string", "-c", str(path), "--no-trace"
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == answer + "\n"
    [line] = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert line.startswith("fallback expert 'broken' failed: ") and line.endswith("; 'general' answered")
