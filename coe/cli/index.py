"""``coe index build`` and ``coe index search``: the document index that retrieval gates search."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from coe.cli.common import fail, note

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.encoding.embedder import Embedder

index_app = typer.Typer(help="Build and search document indexes for retrieval.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="COE_CONFIG",
        help="Registry whose embedder to use (default: experts.yaml if present, else MiniLM).",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")


def load_registry(config: Path | None) -> CoEConfig | None:
    """The registry named by --config, experts.yaml when it exists, else None (default embedder)."""
    from coe.config import load_config
    from coe.errors import ConfigError

    path = config or Path("experts.yaml")
    if config is None and not path.is_file():
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail("\n".join(exc.issues)) from None


def registry_embedder(registry: CoEConfig | None) -> Embedder:
    """The registry's encoder (from ``load_registry``), or the default one without a registry."""
    from coe.config import EmbedderConfig
    from coe.encoding.embedder import shared_embedder
    from coe.errors import CoEError

    try:
        if registry is None:
            return shared_embedder(EmbedderConfig())
        return shared_embedder(registry.embedder, registry.base_dir)
    except CoEError as exc:
        raise fail(str(exc)) from None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@index_app.command("build")
def build(
    source: Annotated[Path, typer.Argument(help="JSONL (id, text, optional title) or a folder of .txt/.md")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write (replaced if an index)")],
    config: ConfigOpt = None,
    chunk_chars: Annotated[int, typer.Option(help="Characters per chunk.", min=100)] = 800,
    overlap: Annotated[int, typer.Option(help="Characters shared by neighbouring chunks.", min=0)] = 150,
    kind: Annotated[str, typer.Option(help="auto (flat, HNSW above 50k chunks), flat or hnsw.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the index metadata as JSON.")] = False,
) -> None:
    """Chunk the documents, embed them with the registry's encoder, and write a faiss index."""
    from coe.errors import CoEError
    from coe.retrieval.corpus import read_corpus
    from coe.retrieval.index import build_index

    if kind not in ("auto", "flat", "hnsw"):
        raise fail(f"--kind must be auto, flat or hnsw (got {kind!r})")
    if overlap >= chunk_chars:
        raise fail(f"--overlap ({overlap}) must be smaller than --chunk-chars ({chunk_chars})")
    try:
        corpus = read_corpus(source)
    except CoEError as exc:
        raise fail(str(exc)) from None
    for why in corpus.skipped[:10]:
        note("skipped", why)
    embedder = registry_embedder(load_registry(config))

    def progress(done: int, total: int) -> None:
        if not as_json and sys.stderr.isatty():
            typer.echo(f"\rembedded {done}/{total} chunks", err=True, nl=done == total)

    chosen: Literal["auto", "flat", "hnsw"] = kind  # type: ignore[assignment]
    try:
        meta = build_index(
            corpus.documents,
            embedder,
            out,
            source=str(source),
            chunk_chars=chunk_chars,
            overlap=overlap,
            kind=chosen,
            progress=progress,
        )
    except CoEError as exc:
        raise fail(str(exc)) from None
    size = _folder_bytes(out)
    if as_json:
        summary = meta.model_dump(exclude={"embedder": {"probe"}})
        sys.stdout.write(to_json({**summary, "size_bytes": size, "skipped": corpus.skipped}) + "\n")
        return
    typer.echo(
        f"indexed {meta.documents} documents as {meta.chunks} chunks ({meta.kind}, {meta.embedder.dim} dims, "
        f"{meta.embedder.name}) in {meta.build_s:.1f} s -> {out} ({size / 1e6:.1f} MB)"
    )


def to_json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False)


@index_app.command("search")
def search(
    index: Annotated[Path, typer.Argument(help="Index folder written by `coe index build`.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many chunks.", min=1)] = 4,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The k chunks nearest to QUERY, with their cosine scores."""
    from coe.errors import CoEError
    from coe.retrieval.index import DocIndex

    embedder = registry_embedder(load_registry(config))
    try:
        opened = DocIndex.open(index, embedder)  # also warms the encoder (probe check)
        started = time.perf_counter()
        hits = opened.search([query], embedder, k)[0]
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
    except CoEError as exc:
        raise fail(str(exc)) from None
    if as_json:
        data = {"query": query, "index": str(index), "latency_ms": latency_ms}
        sys.stdout.write(to_json({**data, "hits": [h.model_dump() for h in hits]}) + "\n")
        return
    from rich.table import Table

    from coe.cli.common import out

    table = Table("score", "id", "title", "text")
    for hit in hits:
        snippet = " ".join(hit.text.split())[:120]
        table.add_row(f"{hit.score:.3f}", hit.id, hit.title or "", snippet)
    out.print(table)
    out.print(f"{len(hits)} hits in {latency_ms:.1f} ms (encode + search)", highlight=False)
