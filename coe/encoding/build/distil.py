"""Distil a static encoder from a local sentence-transformers model (the model2vec recipe), offline.

Why our own few lines instead of ``model2vec.distill``: that extra pins ``transformers<5.4`` and
would downgrade the encoder stack everyone else uses, while the recipe is short. Each vocabulary
token is run through the transformer alone (``[CLS] token [SEP]``, mean-pooled), the table is
reduced with PCA, and each row is weighted by SIF (``a / (a + p(token))`` with a Zipf estimate of
p from the token's rank), as model2vec does (Tulkens & van Dongen, 2024). At run time a prompt is
tokenised and its token rows averaged: numpy only, well under a millisecond.

Files written to the output folder: ``static.npz`` (``embeddings``, float16) and ``tokenizer.json``
(copied from the source model), plus ``static.json`` saying what it was distilled from.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

STATIC_FILE = "static.npz"
HEADER_FILE = "static.json"
SIF_COEFFICIENT = 1e-4


class StaticHeader(BaseModel):
    format: str = "coe-static-encoder"
    format_version: int = 1
    source: str = Field(description="the encoder it was distilled from")
    dims: int
    vocab_size: int
    seconds: float


def distil_static(source_folder: Path, source_name: str, out: Path, dims: int = 256) -> StaticHeader:
    import numpy as np
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from tokenizers import Tokenizer

    started = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(source_folder / "tokenizer.json"))
    model = AutoModel.from_pretrained(str(source_folder), local_files_only=True).eval()
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    cls_id, sep_id = vocab.get("[CLS]", 101), vocab.get("[SEP]", 102)
    table = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, size, 1024):
            ids = torch.arange(start, min(start + 1024, size))
            batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            table[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    centred = table - table.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    dims = min(dims, vt.shape[0])
    reduced = centred @ vt[:dims].T
    rank = np.arange(1, size + 1, dtype=np.float64)  # WordPiece vocabularies are roughly frequency-ordered
    proba = (1.0 / rank) / (1.0 / rank).sum()
    reduced *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + proba))[:, None]
    out.mkdir(parents=True, exist_ok=True)
    header = StaticHeader(
        source=source_name, dims=dims, vocab_size=size, seconds=round(time.perf_counter() - started, 1)
    )
    with (out / STATIC_FILE).open("wb") as f:
        np.savez(f, embeddings=reduced.astype(np.float16))
    shutil.copyfile(source_folder / "tokenizer.json", out / "tokenizer.json")
    (out / HEADER_FILE).write_text(json.dumps(header.model_dump(), indent=2) + "\n", encoding="utf-8")
    return header
