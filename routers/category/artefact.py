"""A trained router classifier on disk: one ``.npz`` of plain arrays plus a JSON header inside it.

Why this format: loading must be fast (no re-encoding of the training set) and safe (``np.load`` with
``allow_pickle=False`` never runs code), and the header says what produced the arrays, so a router
refuses an artefact made for another encoder or label set instead of routing nonsense.

Layout (format version 2): ``__header__`` is a 0-d unicode array holding ``ArtefactHeader`` as JSON;
``__trained_on__`` holds the training texts' fingerprints (``coe.data.splits.text_fingerprints``; absent
from artefacts written before it, which load all the same); every other key is an array of the model
(see ``routers.category.model``; a cascade prefixes its members' arrays with ``fast.``, ``slow.`` and
``extra0.``, ``extra1.``...; an extra member's params name its encoder folder, as ``encoder_path``
does the main one: see ``recorded_path``). Version 1 (no backend, character truncation) is refused
with a message to retrain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from coe.data.npz import read_npz, write_npz

if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 2
TRAINED_ON_KEY = "__trained_on__"


class ArtefactHeader(BaseModel):
    format: str = "coe-router-classifier"
    format_version: int = FORMAT_VERSION
    encoder: str | None = Field(
        description="embedding space the vectors came from (coe.encoding.files.encoder_space); "
        "None: no encoder"
    )
    backend: str | None = Field(None, description="embedder.backend used for training (torch and onnx agree)")
    encoder_path: str | None = Field(
        None,
        description="folder of a fine-tuned encoder (coe finetune-encoder) it was trained with; relative "
        "to the artefact's folder when inside it (see recorded_path)",
    )
    max_tokens: int | None = Field(None, description="prompts were encoded from their first N tokens")
    labels: list[str]
    classifier: str
    params: dict[str, Any] = Field(default_factory=dict)
    train_size: int
    train_sha256: str = Field(description="hash of the (label, text) pairs trained on")
    created_with: str = Field("", description="coe version that wrote it")


def save(path: Path, header: ArtefactHeader, classifier: Any, train_texts: Sequence[str]) -> None:
    import numpy as np

    from coe.data.splits import text_fingerprints

    arrays = {**classifier.arrays(), TRAINED_ON_KEY: np.unique(text_fingerprints(train_texts))}
    write_npz(path, header.model_dump_json(), arrays)


def trained_on(path: Path) -> np.ndarray | None:
    """The artefact's training-text fingerprints (sorted), or None for one written before they were kept.
    Reads that one array, not the model."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return data[TRAINED_ON_KEY] if TRAINED_ON_KEY in data.files else None


def train_overlap(path: Path, texts: Sequence[str]) -> int | None:
    """How many of ``texts`` the artefact was trained on (exact text), None when it cannot tell."""
    import numpy as np

    from coe.data.splits import text_fingerprints

    seen = trained_on(path)
    if seen is None:
        return None
    return int(np.isin(text_fingerprints(texts), seen).sum())


def load(path: Path) -> tuple[ArtefactHeader, Any]:
    """Return the header and the routing model; raise ValueError naming the file when it is not one."""
    from pydantic import ValidationError

    from routers.category.model import MODEL_KINDS, model_from_arrays

    raw, arrays = read_npz(path, "router artefact")
    arrays.pop(TRAINED_ON_KEY, None)
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: router artefact format version {version}, this coe reads {FORMAT_VERSION}; "
            "retrain it with `coe train-router`"
        )
    try:
        header = ArtefactHeader.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: damaged router artefact header ({exc.error_count()} problems)") from None
    if header.classifier not in MODEL_KINDS:
        raise ValueError(f"{path}: unknown classifier {header.classifier!r}")
    try:
        model = model_from_arrays(
            header.classifier, header.labels, header.params, arrays, header.max_tokens, path.parent
        )
    except KeyError as exc:
        raise ValueError(f"{path}: damaged router artefact (missing {exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return header, model
