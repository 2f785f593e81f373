"""How much memory an expert takes while it is loaded: what the pool weighs against its budget.

``memory_gb`` in experts.yaml wins. Otherwise, for llama.cpp: the GGUF file (weights are mapped
whole) plus the KV cache that ``ctx × parallel`` tokens need, 16-bit K and V for every layer, read
from the GGUF header. For vLLM: ``gpu_memory_utilization`` of the GPU (vLLM takes that much up front,
weights and KV cache together). Activation buffers are not counted: leave some headroom.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from coe.config import CoEConfig, LlamaCppServe, VllmServe
from coe.errors import ExpertError

GB = 1024**3
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def footprint_gb(name: str, config: CoEConfig) -> float:
    expert = config.experts[name]
    if expert.memory_gb is not None:
        return expert.memory_gb
    spec = expert.serve
    if isinstance(spec, LlamaCppServe):
        from coe.experts.models import resolve_model

        model = resolve_model(spec.gguf, config.base_dir, spec.sha256)
        return (model.stat().st_size + kv_cache_bytes(model, spec.ctx * spec.parallel)) / GB
    if isinstance(spec, VllmServe):
        from coe.experts.vllm import gpu_total_gb

        total = gpu_total_gb()
        if total is None:
            raise ExpertError(name, "no GPU found to size it: set memory_gb for this expert")
        return spec.gpu_memory_utilization * total
    return 0.0  # external experts take nothing of ours


def kv_cache_bytes(gguf: Path, tokens: int) -> int:
    """K and V in f16 for ``tokens`` positions: layers × tokens × kv_heads × (key + value dims) × 2."""
    meta = read_gguf_metadata(gguf)
    arch = meta.get("general.architecture", "llama")
    layers = int(meta[f"{arch}.block_count"])
    heads = int(meta.get(f"{arch}.attention.head_count", 1))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta[f"{arch}.embedding_length"]) // max(1, heads)
    key = int(meta.get(f"{arch}.attention.key_length", head_dim))
    value = int(meta.get(f"{arch}.attention.value_length", head_dim))
    return layers * tokens * kv_heads * (key + value) * 2


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value header of a GGUF file (v2/v3), arrays skipped: a few ms, no dependency."""
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", fh.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        _tensors, count = struct.unpack("<QQ", fh.read(16))
        meta: dict[str, Any] = {}
        for _ in range(count):
            key = _string(fh)
            (kind,) = struct.unpack("<I", fh.read(4))
            meta[key] = _value(fh, kind)
        return meta


def _string(fh: BinaryIO) -> str:
    (size,) = struct.unpack("<Q", fh.read(8))
    return fh.read(size).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", fh.read(12))
        if item in _SCALARS:
            fh.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(count):
                _value(fh, item)
        return None
    fmt = "<" + _SCALARS[kind]
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
