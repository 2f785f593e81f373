"""Artefacts on disk as one ``.npz``: plain arrays plus a JSON header, never a pickle.

Why: loading must be fast (no re-encoding) and safe (``np.load(allow_pickle=False)`` never runs
code), and the header says what produced the arrays so that a reader can refuse an artefact made for
another encoder, label set or format instead of silently computing nonsense. Router classifiers,
cost routers and retrieval gates all use this one format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

HEADER_KEY = "__header__"


def write_npz(path: Path, header_json: str, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # an open file keeps numpy from appending ".npz" to the name
        named: dict[str, Any] = {HEADER_KEY: np.array(header_json), **arrays}
        np.savez(fh, **named)


def read_npz(path: Path, what: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The decoded JSON header and the arrays; ValueError "PATH: not a WHAT (why)" otherwise."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a {what} ({exc})") from None
    if HEADER_KEY not in arrays:
        raise ValueError(f"{path}: not a {what} (no header)")
    try:
        header = json.loads(str(arrays.pop(HEADER_KEY)))
    except ValueError as exc:
        raise ValueError(f"{path}: not a {what} (bad header: {exc})") from None
    return header, arrays
