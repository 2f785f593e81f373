"""What a folder written by ``coe finetune-encoder`` says about itself (``coe_encoder.json``).

Why a header: the identity it records (base name + hash of the weights) is the folder's embedding
space (``Embedder.space``), so a router trained on fine-tuned vectors refuses any other encoder and
the base encoder's routers refuse it. Reading it costs a small JSON parse, never a hash of the weights.
"""

from __future__ import annotations

import hashlib
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
    format_version: Literal[1] = 1
    identity: str = Field(description="embedding space: base name + sha256 of the weights (Embedder.space)")
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
    h = hashlib.sha256()
    with (folder / WEIGHTS_FILE).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{base}+ft-{h.hexdigest()[:16]}"
