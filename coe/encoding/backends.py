"""The ways of running a sentence encoder. Each imports its heavy library only when loaded.

Every backend returns mean-pooled, *unnormalised* float32 vectors (``Embedder`` normalises) and
truncates to ``max_tokens`` tokens when given one.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from coe.encoding.files import ONNX_BACKENDS

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.files import EncoderFiles


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, a container's cpuset), not the machine's:
    two onnxruntime threads on a process pinned to one core spin against each other, and one
    prompt cost 2.7x the CPU of one thread (docs/benchmarks/line_rate.md)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class TorchBackend:
    """sentence-transformers on torch: the reference implementation."""

    def __init__(self, files: EncoderFiles, device: str, threads: int | None) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars would pollute `coe route --json`
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(files.folder), device=device)
        self.default_len = int(self.model.max_seq_length)
        self.dim = int(self.model.get_embedding_dimension())
        self._lock = threading.Lock()  # max_seq_length is model state; one truncation at a time

    def encode(self, texts: list[str], batch_size: int, max_tokens: int | None) -> np.ndarray:
        with self._lock:
            self.model.max_seq_length = min(max_tokens or self.default_len, self.default_len)
            vectors: np.ndarray = self.model.encode(
                texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            )
            return vectors


class OnnxBackend:
    """An (int8) ONNX export of a BERT-style encoder on onnxruntime, tokenised with ``tokenizers``.

    Prompts are sorted by length before batching so that a batch pads to similar lengths."""

    def __init__(self, files: EncoderFiles, threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        assert files.onnx is not None and files.tokenizer is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(2, usable_cores())
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(files.onnx), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer))
        self.max_positions = files.max_positions
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self._lock = threading.Lock()  # truncation and padding are tokenizer state

    def _tokenize(self, texts: list[str], max_tokens: int | None) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        limit = min(max_tokens or self.max_positions, self.max_positions)
        with self._lock:
            self.tokenizer.enable_truncation(max_length=limit)
            self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        return ids, mask

    def encode(self, texts: list[str], batch_size: int, max_tokens: int | None) -> np.ndarray:
        import numpy as np

        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = self._tokenize([texts[i] for i in chunk], max_tokens)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feed)[0]
            weights = mask[:, :, None].astype(np.float32)
            out[chunk] = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return out


class StaticBackend:
    """A static encoder distilled by ``coe distil-encoder``: the mean of the prompt's token rows.

    numpy and ``tokenizers`` only; no network runs, so one prompt costs well under a millisecond."""

    def __init__(self, files: EncoderFiles) -> None:
        import numpy as np
        from tokenizers import Tokenizer

        from coe.encoding.build.distil import STATIC_FILE

        with np.load(files.folder / STATIC_FILE, allow_pickle=False) as data:
            self.table = data["embeddings"].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(files.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.dim = int(self.table.shape[1])

    def encode(self, texts: list[str], batch_size: int, max_tokens: int | None) -> np.ndarray:
        import numpy as np

        del batch_size  # a lookup has no batch cost
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = enc.ids[:max_tokens] if max_tokens else enc.ids
            if ids:
                out[i] = self.table[ids].mean(axis=0)
        return out


def load(files: EncoderFiles, device: str, threads: int | None) -> Any:
    if files.quantize_from is not None and files.onnx is not None:
        from coe.encoding.build.quantize import ensure_dynamic_int8

        ensure_dynamic_int8(files.quantize_from, files.onnx)
    if files.backend in ONNX_BACKENDS:
        return OnnxBackend(files, threads)
    if files.backend == "static":
        return StaticBackend(files)
    return TorchBackend(files, device, threads)
