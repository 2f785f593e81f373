"""Sentence embeddings cached on disk, keyed by (encoder, sha256 of the exact text encoded).

Why: offline evaluations re-embed the same tens of thousands of benchmark prompts on every run, and
on a small CPU that is minutes each time. The cache lives under ``coe.experts.models.cache_dir()``
(``~/.cache/coe/embeddings/<encoder>/``), outside the repository, and holds only vectors and hashes,
never the texts.

Layout: one folder per encoder key; each ``shard-*.npz`` holds ``keys`` (n x 32 bytes of sha256) and
``vectors`` (n x dim float32). A run that encodes new texts writes one new shard atomically (temporary
name, then rename), so two processes filling the same cache never corrupt it; at worst a text is stored
twice. Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coe.encoding.view import VIEW_CHARS, text_view

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder


def encoder_key(embedder: Embedder) -> str:
    """What identifies the vectors an embedder produces. An embedder with another backend (an int8
    ONNX model, a distilled static encoder) must expose a distinct ``cache_key`` or ``name``."""
    key = str(getattr(embedder, "cache_key", None) or embedder.name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """``encode(texts)`` returns what ``embedder.encode`` would, computing only the unseen texts."""

    def __init__(self, embedder: Embedder, root: Path | None = None, max_chars: int | None = VIEW_CHARS):
        from coe.experts.models import cache_dir

        self.embedder = embedder
        self.max_chars = max_chars
        self.folder = (root or cache_dir() / "embeddings") / encoder_key(embedder)
        self._known: dict[bytes, np.ndarray] | None = None
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[bytes, np.ndarray]:
        import numpy as np

        if self._known is None:
            self._known = {}
            for shard in sorted(self.folder.glob("shard-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        keys, vectors = data["keys"], data["vectors"]
                except (OSError, ValueError, KeyError):
                    continue  # a damaged shard is only a cache miss, never an error
                for key, vec in zip(keys, vectors, strict=True):
                    self._known[bytes(key)] = vec
        return self._known

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as they are encoded (see ``text_view``)."""
        return [text_view(t, self.max_chars) for t in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        known = self._load()
        prepared = self.prepare(texts)
        digests = [text_digest(t) for t in prepared]
        missing: dict[bytes, str] = {}
        for d, t in zip(digests, prepared, strict=True):
            if d not in known and d not in missing:
                missing[d] = t
        self.misses += len(missing)
        self.hits += len(digests) - len(missing)
        if missing:
            vectors = np.asarray(self.embedder.encode(list(missing.values())), dtype=np.float32)
            new_keys = list(missing)
            for d, vec in zip(new_keys, vectors, strict=True):
                known[d] = vec
            self._write(new_keys, vectors)
        if not digests:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[d] for d in digests]).astype(np.float32, copy=False)

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        import numpy as np

        self.folder.mkdir(parents=True, exist_ok=True)
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=key_array, vectors=vectors)
            os.replace(tmp, self.folder / f"shard-{uuid.uuid4().hex}.npz")
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a read-only cache only costs re-encoding next time
