"""A document index on disk: faiss vectors, a SQLite store of the chunks, and a versioned meta.json.

Layout of an index folder::

    meta.json      IndexMeta: format version, the embedder that made the vectors, chunking, counts
    vectors.faiss  faiss index; row i is chunk i (inner product on unit vectors = cosine)
    chunks.sqlite  table chunks(row, id, doc_id, title, text); only the k rows a search returns are read

Why these choices: a flat inner-product index is exact and, below ~50k chunks, fast enough (a few ms
per query on two cores); above that an HNSW graph keeps a query in milliseconds at a small recall
cost. SQLite reads the k hits without loading the corpus into memory and never executes code on load
(no pickle). The meta records the embedder's name, embedding space and the vector of a fixed probe
sentence, so an index searched with another encoder (whose vectors would be meaningless against it)
is refused with a message instead of returning confident nonsense.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from coe.errors import CoEError
from coe.retrieval.corpus import Chunk, Document, chunk_document

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder

FORMAT: Literal["coe-doc-index"] = "coe-doc-index"
FORMAT_VERSION = 1
META, VECTORS, STORE = "meta.json", "vectors.faiss", "chunks.sqlite"
APPROXIMATE_ABOVE = 50_000  # chunks; above this `--kind auto` builds HNSW instead of a flat index
DOC_TOKENS = 256  # MiniLM's own limit: chunks are embedded whole, whatever the router's truncation
PROBE = "CoE index probe: a fixed sentence whose vector identifies the encoder."
PROBE_MIN_COSINE = 0.99  # torch and the int8 ONNX MiniLM agree above it; another encoder falls far below
_BATCH = 256


class DocIndexError(CoEError):
    """An index that cannot be built or used; the message names the folder and what to do."""


class EmbedderInfo(BaseModel):
    name: str
    space: str = Field(description="vectors of equal spaces are interchangeable (torch and onnx MiniLM)")
    backend: str
    dim: int
    probe: list[float] = Field(description="the vector of PROBE, to catch a different encoder")


class IndexMeta(BaseModel):
    format: Literal["coe-doc-index"] = FORMAT
    format_version: int = FORMAT_VERSION
    embedder: EmbedderInfo
    kind: Literal["flat", "hnsw"]
    hnsw_m: int | None = None
    ef_search: int | None = None
    chunk_chars: int
    overlap: int
    documents: int
    chunks: int
    source: str
    built_at: str
    build_s: float


class Hit(BaseModel):
    id: str
    doc_id: str
    title: str | None = None
    text: str
    score: float


def embedder_info(embedder: Embedder) -> EmbedderInfo:
    probe = embedder.encode([PROBE], max_tokens=DOC_TOKENS)[0]
    return EmbedderInfo(
        name=embedder.name,
        space=embedder.space,
        backend=embedder.backend,
        dim=len(probe),
        probe=[float(x) for x in probe],
    )


def _chunk_text(chunk: Chunk) -> str:
    return f"{chunk.title}\n{chunk.text}" if chunk.title else chunk.text


def build_index(
    documents: Sequence[Document],
    embedder: Embedder,
    out: Path,
    *,
    source: str,
    chunk_chars: int = 800,
    overlap: int = 150,
    kind: Literal["auto", "flat", "hnsw"] = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> IndexMeta:
    """Chunk, embed and write a complete index to ``out``, replacing an index already there.

    Written to a sibling folder first and renamed at the end, so a failed build never leaves half
    an index behind (nor destroys the old one)."""
    import numpy as np

    if not documents:
        raise DocIndexError(f"{source}: empty corpus: nothing to index")
    _check_target(out)
    started = time.perf_counter()
    chunks = [c for doc in documents for c in chunk_document(doc, chunk_chars, overlap)]
    parts = []
    for i in range(0, len(chunks), _BATCH):
        parts.append(embedder.encode([_chunk_text(c) for c in chunks[i : i + _BATCH]], max_tokens=DOC_TOKENS))
        if progress is not None:
            progress(min(i + _BATCH, len(chunks)), len(chunks))
    vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    chosen: Literal["flat", "hnsw"] = (
        kind if kind != "auto" else ("hnsw" if len(chunks) > APPROXIMATE_ABOVE else "flat")
    )
    meta = IndexMeta(
        embedder=embedder_info(embedder),
        kind=chosen,
        hnsw_m=32 if chosen == "hnsw" else None,
        ef_search=64 if chosen == "hnsw" else None,
        chunk_chars=chunk_chars,
        overlap=overlap,
        documents=len(documents),
        chunks=len(chunks),
        source=source,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_s=0.0,
    )
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_faiss(tmp / VECTORS, vectors, meta)
        _write_store(tmp / STORE, chunks)
        meta.build_s = round(time.perf_counter() - started, 2)
        (tmp / META).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DocIndexError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / META).is_file():
        raise DocIndexError(f"{out}: folder is not empty and holds no index; choose another --out")


def _replace(new: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _write_faiss(path: Path, vectors: np.ndarray, meta: IndexMeta) -> None:
    import faiss

    dim = vectors.shape[1]
    index: Any
    if meta.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, meta.hnsw_m or 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    faiss.write_index(index, str(path))


def _write_store(path: Path, chunks: Sequence[Chunk]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE chunks (row INTEGER PRIMARY KEY, id TEXT NOT NULL, doc_id TEXT NOT NULL, "
            "title TEXT, text TEXT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
            [(i, c.id, c.doc_id, c.title, c.text) for i, c in enumerate(chunks)],
        )
    db.close()


class DocIndex:
    """An opened index. ``open`` checks everything that can be wrong before the first search."""

    def __init__(self, folder: Path, meta: IndexMeta, index: Any, db: sqlite3.Connection) -> None:
        self.folder = folder
        self.meta = meta
        self._index = index
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, folder: Path, embedder: Embedder | None = None) -> DocIndex:
        """Load and check an index; with ``embedder``, refuse one built by another encoder."""
        import faiss

        meta = read_meta(folder)
        try:
            index: Any = faiss.read_index(str(folder / VECTORS))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise DocIndexError(
                f"{folder / VECTORS}: corrupt faiss index ({first}); rebuild the index"
            ) from None
        if index.ntotal != meta.chunks or index.d != meta.embedder.dim:
            raise DocIndexError(
                f"{folder}: corrupt index: {index.ntotal} vectors of dimension {index.d}, meta.json says "
                f"{meta.chunks} of dimension {meta.embedder.dim}; rebuild the index"
            )
        if meta.kind == "hnsw" and meta.ef_search:
            index.hnsw.efSearch = meta.ef_search
        db = _open_store(folder / STORE, meta.chunks)
        opened = cls(folder, meta, index, db)
        if embedder is not None:
            opened.check_embedder(embedder)
        return opened

    def check_embedder(self, embedder: Embedder) -> None:
        import numpy as np

        built = self.meta.embedder
        mine = embedder_info(embedder)
        how = f"rebuild it with `coe index build SOURCE --out {self.folder}` using this embedder"
        if built.space != mine.space or built.dim != mine.dim:
            raise DocIndexError(
                f"{self.folder}: built with embedder {built.name!r} (backend {built.backend}, "
                f"{built.dim} dims), but this configuration uses {mine.name!r} (backend {mine.backend}, "
                f"{mine.dim} dims); {how}"
            )
        cosine = float(np.dot(np.asarray(built.probe), np.asarray(mine.probe)))
        if cosine < PROBE_MIN_COSINE:
            raise DocIndexError(
                f"{self.folder}: the embedder {mine.name!r} gives other vectors than the one that built "
                f"this index (probe cosine {cosine:.3f} < {PROBE_MIN_COSINE}); {how}"
            )

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        from coe.encoding.search import search

        if len(vectors) == 0:
            return []
        k = max(1, min(k, self.meta.chunks))
        scores, rows = search(self._index, vectors, k)
        wanted = sorted({int(r) for r in rows.ravel() if r >= 0})
        with self._lock:
            marks = ",".join("?" * len(wanted))
            found = {
                row: (cid, doc, title, text)
                for row, cid, doc, title, text in self._db.execute(
                    f"SELECT row, id, doc_id, title, text FROM chunks WHERE row IN ({marks})", wanted
                )
            }
        results: list[list[Hit]] = []
        for row_ids, row_scores in zip(rows, scores, strict=True):
            hits = []
            for r, s in zip(row_ids, row_scores, strict=True):
                if r < 0 or int(r) not in found:
                    continue
                cid, doc, title, text = found[int(r)]
                hits.append(Hit(id=cid, doc_id=doc, title=title, text=text, score=round(float(s), 4)))
            results.append(hits)
        return results

    def search(self, queries: Sequence[str], embedder: Embedder, k: int = 4) -> list[list[Hit]]:
        return self.search_vectors(embedder.encode(list(queries)), k)

    def close(self) -> None:
        self._db.close()


def read_meta(folder: Path) -> IndexMeta:
    path = folder / META
    if not folder.is_dir():
        raise DocIndexError(
            f"{folder}: no such index folder; build one with `coe index build SOURCE --out {folder}`"
        )
    if not path.is_file():
        raise DocIndexError(f"{folder}: not an index (no {META}); build one with `coe index build`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DocIndexError(f"{path}: corrupt index metadata ({exc}); rebuild the index") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DocIndexError(f"{path}: not a CoE document index (format {FORMAT!r} expected)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise DocIndexError(
            f"{path}: index format version {raw.get('format_version')}, this CoE reads "
            f"{FORMAT_VERSION}; rebuild the index"
        )
    try:
        return IndexMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DocIndexError(
            f"{path}: corrupt index metadata ({where}: {first['msg']}); rebuild the index"
        ) from None


def _open_store(path: Path, expected: int) -> sqlite3.Connection:
    if not path.is_file():
        raise DocIndexError(f"{path}: missing chunk store; rebuild the index")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        (count,) = db.execute("SELECT COUNT(*) FROM chunks").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DocIndexError(f"{path}: corrupt chunk store ({exc}); rebuild the index") from None
    if count != expected:
        db.close()
        raise DocIndexError(f"{path}: corrupt chunk store ({count} chunks, meta.json says {expected})")
    return db
