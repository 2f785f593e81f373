"""Inputs of the outcome commands: files (or folders) to tables, a train/test split, cached vectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coe.evaluation.data import DataError
from coe.evaluation.outcomes import split_sides

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable


def expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder stands for the ``*.jsonl`` files in it."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: folder holds no jsonl files (*.jsonl)")
            out.extend(found)
        else:
            out.append(p)
    return out


def load_sides(
    fmt: str, train_files: Sequence[Path], test_files: Sequence[Path], test_fraction: float
) -> tuple[OutcomeTable, OutcomeTable, str]:
    """Train and test tables (see ``split_sides``) and a label saying where the test side came from."""
    train_list, test_list = expand(train_files), expand(test_files)
    train, test = split_sides(fmt, train_list, test_list, test_fraction)
    shared = set(map(str, train_list)) & set(map(str, test_list)) if test_list else set(map(str, train_list))
    if not shared:
        return train, test, "test files"
    return (
        train,
        test,
        f"held-out {test_fraction:.0%} of {len(shared)} file(s) given for training (split by prompt)",
    )


def embed(tables: Sequence[OutcomeTable], encoder: str, max_chars: int | None) -> list[np.ndarray]:
    """Vectors of each table's prompts, through the on-disk cache (only unseen prompts are encoded)."""
    from coe.encoding.cache import EmbeddingCache
    from coe.encoding.embedder import Embedder

    cache = EmbeddingCache(Embedder(encoder), max_chars=max_chars)
    return [cache.encode(t.prompts) for t in tables]
