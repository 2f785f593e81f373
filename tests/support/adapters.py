"""LoRA adapters for tests, benchmarks and the adapters example, written with the ``gguf`` package
for a base GGUF (nothing is downloaded): small, deterministic (a seed), and strong enough that each
visibly changes the base's answer at temperature 0.

The layout is llama.cpp's (what ``convert_lora_to_gguf.py`` writes): ``general.type: adapter``,
``adapter.type: lora``, ``adapter.lora.alpha``, and for each adapted weight ``W`` (GGUF dims
``[in, out]``) the tensors ``W.lora_a`` (dims ``[in, rank]``) and ``W.lora_b`` (dims ``[rank, out]``),
so that the delta is ``B @ A * alpha / rank``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tests.support.registries import SMOLLM


def base_path(ref: str = SMOLLM) -> Path:
    """The base model's file (the packaged SmolLM2 by default)."""
    from coe.experts.models import resolve_model

    return resolve_model(ref, Path("."))


def write_lora(
    path: Path,
    *,
    seed: int,
    base: Path | None = None,
    rank: int = 4,
    strength: float = 0.5,
    targets: tuple[str, ...] = ("attn_q", "attn_output"),
    architecture: str | None = None,
) -> Path:
    """A LoRA adapter of ``base`` on the ``targets`` weights of every block. ``architecture`` other
    than the base's writes an adapter llama.cpp (and ``coe validate``) refuses for that base."""
    import gguf

    arch, shapes = _base_shapes(base or base_path(), targets)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), architecture or arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))  # scale alpha / rank = 1
    for name, (n_in, n_out) in sorted(shapes.items()):
        a = rng.standard_normal((rank, n_in)).astype(np.float32) * (strength / np.sqrt(n_in))
        b = rng.standard_normal((n_out, rank)).astype(np.float32) * strength
        writer.add_tensor(f"{name}.lora_a", a.astype(np.float16))
        writer.add_tensor(f"{name}.lora_b", b.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@functools.cache
def _base_shapes(base: Path, targets: tuple[str, ...]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The base's architecture and the (in, out) dims of its target weights: reading the header takes
    seconds (the tokenizer's arrays), so once per base."""
    import gguf

    reader = gguf.GGUFReader(base)
    arch = str(reader.fields["general.architecture"].contents())
    shapes = {
        t.name: (int(t.shape[0]), int(t.shape[1]))
        for t in reader.tensors
        if t.name.startswith("blk.") and t.name.split(".")[2] in targets and t.name.endswith(".weight")
    }
    return arch, shapes


def write_loras(folder: Path, count: int, *, base: Path | None = None) -> list[Path]:
    """``count`` adapters ``folder/lora-N.gguf`` with seeds 1..count."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_lora(folder / f"lora-{i}.gguf", seed=i, base=base) for i in range(1, count + 1)]
