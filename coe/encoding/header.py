"""What a folder written by ``coe finetune-encoder`` says about itself (``coe_encoder.json``).

Why a header: the identity it records (base name + hash of the weights) is the folder's embedding
space (``Embedder.space``), so a router trained on fine-tuned vectors refuses any other encoder and
the base encoder's routers refuse it.

Why the header also records the sha256 of each weights file (``weights``), and a backend checks the
file it loads against it: the identity alone is a string in a JSON file, so other weights copied
into the folder under an unchanged header would have been served as the space they are not. The hash
is computed once per file version (remembered like the GGUF hashes, ``coe.experts.models``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from coe.data.splits import DEV_SHARE
from coe.errors import ModelNotFoundError

HEADER_FILE = "coe_encoder.json"
WEIGHTS_FILE = "model.safetensors"


class FinetuneSettings(BaseModel):
    epochs: int = Field(3, ge=1, description="passes; each draws at most max_per_label prompts per label")
    max_tokens: int = Field(128, ge=8, description="prompts are cut to their first N tokens")
    batch_size: int = Field(32, ge=2)
    learning_rate: float = Field(4e-5, gt=0, description="peak learning rate of the encoder")
    head_learning_rate: float = Field(2e-3, gt=0, description="learning rate of the cosine head")
    scale: float = Field(20.0, gt=0, description="cosine-softmax scale (inverse temperature)")
    max_per_label: int | None = Field(None, ge=1, description="cap per label and epoch (None: all)")
    dev_share: float = Field(DEV_SHARE, ge=0, lt=1, description="held-out share that picks the epoch")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where the CPU has it")
    seed: int = 0


class EpochStats(BaseModel):
    epoch: int
    prompts: int
    seconds: float
    train_loss: float
    dev_accuracy: float | None
    dev_loss: float | None


class OnnxExport(BaseModel):
    file: str = Field(description="relative to the folder")
    precision: Literal["int8", "fp32"]
    cosine_to_torch_min: float = Field(description="worst cosine to the torch vectors on sample prompts")
    cosine_to_torch_mean: float


class FinetunedEncoder(BaseModel):
    """``coe_encoder.json``: what a fine-tuned folder is, so a router trained on it can insist on it."""

    format: Literal["coe-finetuned-encoder"] = "coe-finetuned-encoder"
    format_version: Literal[1, 2] = Field(2, description="1: written before `weights` existed")
    identity: str = Field(description="embedding space: base name + sha256 of the weights (Embedder.space)")
    weights: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each weights file, by its path inside the folder"
    )
    base: str = Field(description="the encoder it was fine-tuned from")
    labels: list[str]
    train_size: int = Field(description="prompts trained on (the held-out share excluded)")
    dev_size: int
    data_sha256: str = Field(description="hash of all (label, text) pairs given, held-out share included")
    settings: FinetuneSettings
    precision_used: Literal["fp32", "bf16"]
    history: list[EpochStats]
    best_epoch: int = Field(description="the epoch whose weights were kept (best held-out accuracy)")
    onnx: OnnxExport | None = None
    seconds: float
    created_with: str = ""


def read_header(folder: Path) -> FinetunedEncoder | None:
    """The header of a fine-tuned folder; None for any other folder; an error naming a damaged one."""
    path = folder / HEADER_FILE
    if not path.is_file():
        return None
    try:
        return FinetunedEncoder.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise ModelNotFoundError(f"{path}: damaged fine-tuned encoder header ({exc})") from None


def weights_identity(folder: Path, base: str) -> str:
    """``<base>+ft-<first 16 hex of sha256(model.safetensors)>``: other weights, another space."""
    return f"{base}+ft-{_sha256(folder / WEIGHTS_FILE)[:16]}"


def weights_hashes(folder: Path, files: list[str]) -> dict[str, str]:
    """What ``FinetunedEncoder.weights`` records for the files a backend may load."""
    return {name: _sha256(folder / name) for name in files if (folder / name).is_file()}


def checked_identity(folder: Path, loaded: Path) -> str | None:
    """The space of a fine-tuned folder, once ``loaded`` (the weights file a backend is about to
    load) is shown to be the file its header names; None for a folder that is no fine-tune.

    Raises ModelNotFoundError naming the folder and the file when the weights differ, or when an
    older header cannot vouch for that file (then it says how to rebuild the folder)."""
    header = read_header(folder)
    if header is None:
        return None
    name = loaded.relative_to(folder).as_posix()
    expected = header.weights.get(name)
    if expected is None and name == WEIGHTS_FILE and not header.weights:
        # Written before `weights`: the identity's 16 hex digits are this very file's hash.
        expected = header.identity.rpartition("+ft-")[2]
    if expected is None:
        raise ModelNotFoundError(
            f"{folder / HEADER_FILE} records no hash of {name} (it was written by an older CoE), so "
            f"the weights it would load cannot be checked: rebuild the folder with `coe finetune-encoder "
            f"DATA --out {folder}` (python examples/trained_router/reproduce.py rebuilds its own)"
        )
    actual = _sha256(loaded)
    if not actual.startswith(expected):
        raise ModelNotFoundError(
            f"{folder}: {name} holds other weights than its {HEADER_FILE} records (sha256 "
            f"{actual[:16]}..., expected {expected[:16]}...): the folder was changed after `coe "
            "finetune-encoder` wrote it; restore the file or fine-tune again"
        )
    return header.identity


def _sha256(path: Path) -> str:
    from coe.experts.models import file_sha256

    return file_sha256(path)
