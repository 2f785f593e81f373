"""LoRA adapter files, read offline: whether a file is an adapter of the expert's base model, for
``coe validate``, before any process starts (what vLLM is told to load is coe.experts.vllm's).

llama.cpp adapters are GGUF files whose header says ``general.type: adapter``, ``adapter.type: lora``
and the architecture they were trained for (what ``convert_lora_to_gguf.py`` writes); llama-server
refuses one of another architecture only once it starts. vLLM adapters are PEFT folders with an
``adapter_config.json``: its ``r`` is the rank vLLM must reserve room for, its
``base_model_name_or_path`` (where present) the base it was trained on.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from coe.config import LlamaCppServe, VllmServe
from coe.errors import ModelNotFoundError
from coe.experts.footprint import read_gguf_metadata
from coe.experts.models import adapter_path
from coe.experts.vllm import peft_config


def check_adapter(spec: LlamaCppServe | VllmServe, base_dir: Path) -> str | None:
    """Why the expert's ``lora`` cannot be loaded on its base, or None (also None without one)."""
    if spec.lora is None:
        return None
    try:
        path = adapter_path(spec.lora, base_dir)
    except ModelNotFoundError as exc:
        return str(exc)
    if isinstance(spec, LlamaCppServe):
        return _check_gguf_adapter(path, spec, base_dir)
    return _check_peft_adapter(path, spec)


def _check_gguf_adapter(path: Path, spec: LlamaCppServe, base_dir: Path) -> str | None:
    if not path.is_file():
        return f"adapter file not found: {path}"
    if "," in str(path):  # llama-server reads its adapters as one comma-separated list
        return f"{path}: llama-server cannot load an adapter whose path holds a comma; rename it"
    try:
        meta = read_gguf_metadata(path)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        return f"{path} is not a GGUF adapter: {exc}"
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        kind = f"general.type {meta.get('general.type')!r}, adapter.type {meta.get('adapter.type')!r}"
        return f"{path} is not a LoRA adapter ({kind}; want adapter, lora)"
    base = _base_metadata(spec, base_dir)
    want, got = (base or {}).get("general.architecture"), meta.get("general.architecture")
    if want is not None and got != want:
        return f"{path} is an adapter for architecture {got!r}, but the base {spec.gguf} is {want!r}"
    return None


def _base_metadata(spec: LlamaCppServe, base_dir: Path) -> dict[str, Any] | None:
    """The base model's header if its file is at hand without assembling it (else the check of the
    architecture waits for llama-server)."""
    try:
        path = adapter_path(spec.gguf, base_dir) if "/" in spec.gguf.removeprefix("pkg:") else None
        return read_gguf_metadata(path) if path is not None and path.is_file() else None
    except (ModelNotFoundError, OSError, ValueError, KeyError, struct.error):
        return None


def _check_peft_adapter(path: Path, spec: VllmServe) -> str | None:
    if not path.is_dir():
        return f"adapter folder not found: {path}"
    config = peft_config(path)
    if not config:
        return f"{path} has no readable adapter_config.json: not a PEFT adapter folder"
    base = config.get("base_model_name_or_path")
    if base and not _same_model(str(base), spec.model):
        return f"{path} is an adapter of {base!r}, not of the base {spec.model!r}"
    return None


def _same_model(a: str, b: str) -> bool:
    """A hub name and a local folder of it name one model when their last parts agree."""
    return a.rstrip("/") == b.rstrip("/") or Path(a.rstrip("/")).name == Path(b.rstrip("/")).name
