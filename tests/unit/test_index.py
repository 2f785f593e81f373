"""The document index: chunking, building with the real MiniLM encoder, searching, and every way an
index or a corpus can be unusable (each a one-line message and exit 1, never a stack trace)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.config import EmbedderConfig
from coe.encoding.embedder import Embedder, shared_embedder
from coe.retrieval.corpus import CorpusError, Document, chunk_document, read_corpus
from coe.retrieval.index import DocIndex, DocIndexError, build_index
from tests.support import paths

DATA = paths.DATA / "rag"
CORPUS = DATA / "corpus.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return shared_embedder(EmbedderConfig())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("idx") / "index"
    result = runner.invoke(app, ["index", "build", str(CORPUS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "indexed 8 documents" in result.output
    return out


def _search(index: Path, query: str, *extra: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["index", "search", str(index), query, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _fails(args: list[str], *expected: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, result.output
    return result.output


# ------------------------------------------------------------------------------------ chunking


def test_long_documents_are_cut_at_whitespace_with_overlap() -> None:
    words = [f"w{i:03d}" for i in range(400)]  # 1,999 characters
    chunks = chunk_document(Document(id="d", text=" ".join(words)), size=300, overlap=60)
    assert [c.id for c in chunks][:2] == ["d#0", "d#1"] and all(c.doc_id == "d" for c in chunks)
    assert all(len(c.text) <= 300 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        assert a.text.split()[-1] in b.text.split()  # neighbours share words: nothing falls in a cut
        assert all(w in words for w in b.text.split())  # never a word cut in half
    assert {w for c in chunks for w in c.text.split()} == set(words)


def test_a_short_document_is_one_chunk_with_the_document_id() -> None:
    chunks = chunk_document(Document(id="x", text="  a \n\n \n short   text ", title="T"), size=300)
    assert [(c.id, c.text, c.title) for c in chunks] == [("x", "a\nshort text", "T")]


# ------------------------------------------------------------------------------ build / search


def test_search_finds_the_document_that_answers(built: Path) -> None:
    data = _search(built, "Who designed the Kelvor bridge?", "-k", "2")
    assert len(data["hits"]) == 2 and data["hits"][0]["id"] == "kelvor-bridge"
    assert data["hits"][0]["score"] > data["hits"][1]["score"]
    assert data["hits"][0]["title"] == "Kelvor bridge" and "Maren Osk" in data["hits"][0]["text"]
    meta = json.loads((built / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["embedder"]["name"] == "all-MiniLM-L6-v2"
    assert meta["kind"] == "flat" and meta["chunks"] >= 8


def test_a_folder_of_text_files_is_indexed_with_relative_ids(tmp_path: Path, embedder: Embedder) -> None:
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "bridge.md").write_text("# Kelvor bridge\nThe Kelvor bridge was designed by Maren Osk.\n")
    (src / "sub" / "fish.txt").write_text("The glimmerfin trout lives in cold plateau lakes.\n")
    (src / "empty.txt").write_text("   \n")
    (src / "notes.csv").write_text("ignored,file\n")
    corpus = read_corpus(src)
    assert [(d.id, d.title) for d in corpus.documents] == [
        ("bridge.md", "Kelvor bridge"),
        ("sub/fish.txt", "fish"),
    ]
    assert len(corpus.skipped) == 1 and "empty.txt" in corpus.skipped[0]
    build_index(corpus.documents, embedder, tmp_path / "idx", source=str(src))
    hits = DocIndex.open(tmp_path / "idx", embedder).search(["where do glimmerfin trout live"], embedder, 1)
    assert hits[0][0].id == "sub/fish.txt"


def test_hnsw_index_returns_the_same_best_hit(tmp_path: Path, embedder: Embedder, built: Path) -> None:
    out = tmp_path / "hnsw"
    assert (
        runner.invoke(app, ["index", "build", str(CORPUS), "--out", str(out), "--kind", "hnsw"]).exit_code
        == 0
    )
    assert json.loads((out / "meta.json").read_text())["kind"] == "hnsw"
    for query in ("How tall is Crannock Tor?", "Nimbus Robotics revenue 2022"):
        assert _search(out, query)["hits"][0]["id"] == _search(built, query)["hits"][0]["id"]


def test_rebuilding_replaces_the_index_and_a_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    small = tmp_path / "small.jsonl"
    small.write_text('{"id": "only", "text": "One document about the Kelvor bridge."}\n')
    for source in (CORPUS, small):
        assert runner.invoke(app, ["index", "build", str(source), "--out", str(out)]).exit_code == 0
    assert json.loads((out / "meta.json").read_text())["documents"] == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    _fails(["index", "build", str(small), "--out", str(tmp_path / "mine")], "not empty and holds no index")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_an_onnx_encoder_of_the_same_model_can_search_a_torch_built_index(
    embedder: Embedder, tmp_path: Path
) -> None:
    """The faster encoder backend plugs in: same embedding space, so the index is accepted; the
    int8-compute one is another space, refused with the command that rebuilds."""
    assert embedder.backend == "torch"
    build_index(read_corpus(CORPUS).documents, embedder, tmp_path / "idx", source=str(CORPUS))
    onnx = Embedder("all-MiniLM-L6-v2", backend="onnx")
    hits = DocIndex.open(tmp_path / "idx", onnx).search(["Who designed the Kelvor bridge?"], onnx, 1)
    assert hits[0][0].id == "kelvor-bridge"
    with pytest.raises(DocIndexError, match=r"backend onnx-int8.*coe index build"):
        DocIndex.open(tmp_path / "idx", Embedder("all-MiniLM-L6-v2", backend="onnx-int8"))


# ------------------------------------------------------------------------------------ bad input


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    _fails(["index", "build", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "i")], "empty corpus")
    (tmp_path / "folder").mkdir()
    _fails(["index", "build", str(tmp_path / "folder"), "--out", str(tmp_path / "i")], "empty corpus")
    assert not (tmp_path / "i").exists()


def test_non_utf8_file_is_refused_with_its_position(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ok.txt").write_text("fine\n")
    (tmp_path / "docs" / "latin.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    _fails(["index", "build", str(tmp_path / "docs"), "--out", str(tmp_path / "i")], "latin.txt:2: not UTF-8")


def test_bad_jsonl_rows_are_listed_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\nnot json\n{"text": "no id"}\n{"id": "a", "text": "again"}\n')
    with pytest.raises(CorpusError) as exc:
        read_corpus(bad)
    lines = str(exc.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{bad}:2", f"{bad}:3", f"{bad}:4"]
    assert "duplicate id 'a'" in lines[2]


def test_missing_index_is_refused(tmp_path: Path) -> None:
    _fails(["index", "search", str(tmp_path / "nowhere"), "bridge"], "no such index folder")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: (d / "vectors.faiss").write_bytes(b"\x00garbage"), "corrupt faiss index"),
        (lambda d: (d / "meta.json").write_text("{not json"), "corrupt index metadata"),
        (lambda d: (d / "chunks.sqlite").write_bytes(b"garbage" * 100), "corrupt chunk store"),
        (lambda d: (d / "chunks.sqlite").unlink(), "missing chunk store"),
    ],
    ids=["faiss", "meta", "store", "no-store"],
)
def test_corrupt_index_is_refused(tmp_path: Path, built: Path, damage, expected: str) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    damage(copy)
    _fails(["index", "search", str(copy), "bridge"], expected, "rebuild")


def test_index_built_with_another_embedder_is_refused(
    tmp_path: Path, built: Path, embedder: Embedder
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["embedder"].update(name="bge-small-en", space="bge-small-en")
    (copy / "meta.json").write_text(json.dumps(meta))
    _fails(["index", "search", str(copy), "bridge"], "built with embedder 'bge-small-en'", "rebuild it")
    # Same name, other vectors (a fine-tuned copy in embedder.path, say): the probe catches it.
    meta["embedder"].update(name="all-MiniLM-L6-v2", space="all-MiniLM-L6-v2")
    meta["embedder"]["probe"] = [-x for x in meta["embedder"]["probe"]]
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DocIndexError, match="gives other vectors"):
        DocIndex.open(copy, embedder)
