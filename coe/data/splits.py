"""Deterministic facts about a labelled training set: its held-out share, its hash and its texts'
fingerprints.

Why one shared function: ``coe finetune-encoder`` picks its epoch on this share and never trains on
it, and ``coe train-router`` tunes the cascade on the same share. Because both use the same rows, the
cascade's tuning sees honest predictions from an encoder that never saw those prompts' labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEV_SHARE = 0.15


def held_out(texts: Sequence[str], share: float = DEV_SHARE) -> list[bool]:
    """True for the texts in the held-out share (stable across runs, machines and row order)."""
    cut = share * 1000
    return [int(hashlib.sha1(t.encode()).hexdigest()[:8], 16) % 1000 < cut for t in texts]


def rows_sha256(rows: Iterable[list[Any]]) -> str:
    """sha256 of the rows as JSON lines, in order: what a trained artefact says it was trained on."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def dataset_hash(texts: Sequence[str], labels: Sequence[str] | Sequence[int]) -> str:
    """The hash of the (label, text) pairs of labelled prompts (routers, encoders, gates)."""
    return rows_sha256([label, text] for text, label in zip(texts, labels, strict=True))


def text_fingerprints(texts: Iterable[str]) -> np.ndarray:
    """64-bit fingerprints of the exact texts (sha1 prefixes), in order.

    Why: an artefact keeps these so that an evaluation can say how many of its prompts were trained
    on, which makes a contaminated accuracy visible instead of quietly flattering (8 bytes a prompt)."""
    import numpy as np

    raw = [int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little") for t in texts]
    return np.array(raw, dtype=np.uint64)
