"""Readiness that means ready (coe/pipeline/readiness.py): every strategy file the registry names is loaded
by ``coe validate`` (and ``coe serve``'s start-up), and a file that cannot be loaded is reported at
the key that names it, with the registry's file and line; no expert is started. Real encoder."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from coe import CoE, load_config
from coe.cli import app
from coe.pipeline.readiness import problems
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.registries import rag_registry

runner = CliRunner()
GARBAGE = b"this is not an npz file\x00\x01"


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def default_copy(tmp_path: Path, extra: str = "", router_model: str | None = None) -> Path:
    """The default registry, with ``router.model`` in place of its max_tokens and ``extra`` appended."""
    text = DEFAULT_REGISTRY.read_text()
    if router_model is not None:
        text = re.sub(r"(?m)^  max_tokens: .*$", f"  model: {router_model}", text, count=1)
    path = tmp_path / "experts.yaml"
    path.write_text(text + extra)
    return path


def test_validate_names_router_model_with_file_and_line_for_a_garbage_artefact(tmp_path: Path) -> None:
    (tmp_path / "router.npz").write_bytes(GARBAGE)
    path = default_copy(tmp_path, router_model="router.npz")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    where = f"{path}:{line_of(path, '  model: router.npz')}: router.model: "
    assert where in result.output and "not a router artefact" in result.output
    assert "ok" not in result.output
    quick = runner.invoke(app, ["validate", str(path), "--no-check-models"])  # the registry alone
    assert quick.exit_code == 0 and "ok" in quick.output


def test_problems_builds_every_strategy_without_starting_an_expert(tmp_path: Path) -> None:
    (tmp_path / "router.npz").write_bytes(GARBAGE)
    with CoE(load_config(DEFAULT_REGISTRY)) as coe:
        assert problems(coe.parts) == {}
        assert coe.pool.running == {}
    with CoE(load_config(default_copy(tmp_path, router_model="router.npz"))) as coe:
        found = problems(coe.parts)
        assert list(found) == ["router.model"] and str(tmp_path / "router.npz") in found["router.model"]
        assert coe.pool.running == {}


def test_validate_names_a_guard_file_that_cannot_be_loaded(tmp_path: Path) -> None:
    (tmp_path / "guard.npz").write_bytes(GARBAGE)
    path = default_copy(tmp_path, "\nsignals:\n  guard:\n    model: guard.npz\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}:{line_of(path, 'model: guard.npz')}: signals.guard.model: " in result.output
    assert "not a guard artefact" in result.output


def test_a_semantic_cache_whose_verifier_cannot_be_loaded_is_named(tmp_path: Path) -> None:
    (tmp_path / "verifier.npz").write_bytes(GARBAGE)
    path = default_copy(tmp_path, "\nsignals:\n  cache: {verifier: verifier.npz}\n")
    with CoE(load_config(path)) as coe:
        found = problems(coe.parts)
    assert list(found) == ["signals.cache.verifier"]
    assert "not a cache verifier" in found["signals.cache.verifier"]
    exact_only = default_copy(tmp_path, "\nsignals:\n  cache: {verifier: verifier.npz, semantic: false}\n")
    with CoE(load_config(exact_only)) as coe:
        assert problems(coe.parts) == {}  # exact matches only: the verifier is never asked


def test_a_broken_gate_file_or_index_is_named_at_its_key(rag_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "gate.npz").write_bytes(GARBAGE)
    (tmp_path / "empty").mkdir()
    index, gate = rag_dir / "index", rag_dir / "gate.npz"
    cases = {
        f"{{gate: classifier, index: '{index}', model: '{gate}'}}": {},
        f"{{gate: classifier, index: '{index}', model: gate.npz}}": {"retrieval.model": "not a gate file"},
        f"{{gate: classifier, index: empty, model: '{gate}'}}": {"retrieval.index": "not an index"},
    }
    for block, expected in cases.items():
        with CoE(load_config(rag_registry(tmp_path, block))) as coe:
            found = problems(coe.parts)
            assert coe.pool.running == {}
        assert list(found) == list(expected), (block, found)
        assert all(expected[k] in found[k] for k in expected), found
    result = runner.invoke(app, ["validate", str(tmp_path / "experts.yaml")])
    assert result.exit_code == 1 and "retrieval.index: " in result.output
    line = line_of(tmp_path / "experts.yaml", "retrieval:")
    assert f"experts.yaml:{line}: retrieval.index: " in result.output
