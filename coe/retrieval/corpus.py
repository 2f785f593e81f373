"""Documents for the retrieval index: read a JSONL file or a folder of .txt/.md files, then chunk.

Why chunks with overlap: a 10-K page runs to thousands of characters but MiniLM reads only its first
256 word pieces, so a whole page embeds as its first paragraph. Windows of ~800 characters fit the
encoder, and an overlap keeps a fact that straddles a cut whole in at least one window.

Every problem names the file (and line, or byte offset for bad UTF-8); a source with no usable
document is an error, never an empty index.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from coe.data.jsonl import jsonl_rows, raise_problems, read_utf8
from coe.errors import CoEError

TEXT_SUFFIXES = (".txt", ".md")
_ID_FIELDS = ("id", "doc_id")
_SPACE = re.compile(r"\s")


class CorpusError(CoEError):
    """A document source that cannot be indexed; the message says which file and why."""


class Document(BaseModel):
    id: str
    text: str
    title: str | None = None


class Chunk(BaseModel):
    """A window of one document; ``id`` is the document id, plus ``#n`` when the document was split."""

    id: str
    doc_id: str
    title: str | None = None
    text: str


class Corpus(BaseModel):
    documents: list[Document]
    skipped: list[str] = []  # "where: why" for each blank document left out


def read_corpus(source: Path) -> Corpus:
    if source.is_dir():
        corpus = _read_folder(source)
    elif source.is_file():
        corpus = _read_jsonl(source)
    else:
        raise CorpusError(f"{source}: no such file or folder")
    if not corpus.documents:
        what = f"no .txt or .md file with text under {source}" if source.is_dir() else "no document"
        raise CorpusError(f"{source}: empty corpus: {what}")
    return corpus


def _read_folder(folder: Path) -> Corpus:
    docs: list[Document] = []
    skipped: list[str] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    for path in files:
        text = read_utf8(path, CorpusError)
        rel = path.relative_to(folder).as_posix()
        if not text.strip():
            skipped.append(f"{path}: empty file")
            continue
        docs.append(Document(id=rel, text=text, title=_title_of(path, text)))
    return Corpus(documents=docs, skipped=skipped)


def _title_of(path: Path, text: str) -> str:
    first = text.lstrip().split("\n", 1)[0].strip()
    if path.suffix.lower() == ".md" and first.startswith("#"):
        return first.lstrip("#").strip() or path.stem
    return path.stem


def _read_jsonl(path: Path) -> Corpus:
    docs: list[Document] = []
    skipped: list[str] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, row in jsonl_rows(path, read_utf8(path, CorpusError), problems):
        doc_id = next((row[k] for k in _ID_FIELDS if k in row), None)
        text, title = row.get("text"), row.get("title")
        if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or str(doc_id) == "":
            problems.append(f"{path}:{n}: needs an 'id' (or 'doc_id'): a non-empty string or integer")
        elif not isinstance(text, str):
            problems.append(f"{path}:{n}: 'text' must be a string")
        elif title is not None and not isinstance(title, str):
            problems.append(f"{path}:{n}: 'title' must be a string")
        elif str(doc_id) in seen:
            problems.append(f"{path}:{n}: duplicate id {doc_id!r} (first on line {seen[str(doc_id)]})")
        elif not text.strip():
            skipped.append(f"{path}:{n}: document {doc_id!r} has no text")
        else:
            seen[str(doc_id)] = n
            docs.append(Document(id=str(doc_id), text=text, title=title or None))
    raise_problems(problems, CorpusError)
    return Corpus(documents=docs, skipped=skipped)


def _tidy(text: str) -> str:
    """Collapse whitespace (PDF extractions are full of ' \\n \\n' runs that only cost tokens)."""
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r" ?\n[\s]*", "\n", text).strip()


def chunk_document(doc: Document, size: int = 800, overlap: int = 150) -> list[Chunk]:
    """Windows of at most ``size`` characters, cut at whitespace, each starting ``overlap``
    characters before the previous one ended."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size): got overlap={overlap}, size={size}")
    text = _tidy(doc.text)
    if len(text) <= size:
        return [Chunk(id=doc.id, doc_id=doc.id, title=doc.title, text=text)]
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
            end = cut if cut > start else end
        pieces.append(text[start:end].strip())
        if end >= len(text):
            break
        nxt = max(end - overlap, start + 1)
        space = _SPACE.search(text, nxt, end) if overlap else None
        start = space.end() if space else nxt
    return [
        Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, title=doc.title, text=piece)
        for i, piece in enumerate(p for p in pieces if p)
    ]
