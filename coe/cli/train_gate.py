"""``coe train-gate``: fit a retrieval gate on questions labelled "needs retrieval" (1/0)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from coe.cli.common import fail
from coe.cli.index import ConfigOpt, load_registry, registry_embedder

if TYPE_CHECKING:
    from coe.encoding.embedder import Embedder
    from coe.retrieval.gate_data import GateExample, Split
    from coe.retrieval.gate_model import GateHeader

SplitOpt = Annotated[
    str, typer.Option("--split", help="all, or train/test of the split keyed on the question text.")
]
TestPercentOpt = Annotated[
    int, typer.Option("--test-percent", min=1, max=99, help="Share of questions in the test side.")
]
LabelFieldOpt = Annotated[str, typer.Option("--label-field", help="Field holding the label.")]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="Field holding the question.")]
PositiveOpt = Annotated[
    str | None, typer.Option("--positive", help="Label value meaning 'retrieve' (string labels).")
]


def parse_split(split: str) -> Split:
    """The --split value, checked (train-gate and eval gate)."""
    if split not in ("all", "train", "test"):
        raise fail(f"--split must be all, train or test (got {split!r})")
    return cast("Split", split)


def register(app: typer.Typer) -> None:
    app.command("train-gate")(train_gate)


def train_gate(
    data: Annotated[list[Path], typer.Argument(help="JSONL files of labelled questions.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Gate file to write (.npz).")],
    label_field: LabelFieldOpt = "needs_retrieval",
    text_field: TextFieldOpt = "question",
    positive: PositiveOpt = None,
    kind: Annotated[
        str, typer.Option("--kind", help="classifier (logistic regression) or similarity (a threshold).")
    ] = "classifier",
    index: Annotated[
        Path | None, typer.Option("--index", help="Index to tune the similarity threshold against.")
    ] = None,
    split: SplitOpt = "all",
    test_percent: TestPercentOpt = 30,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gate header as JSON.")] = False,
) -> None:
    """Train a retrieval gate on questions labelled with whether they need documents.

    classifier: C and the threshold are chosen by 5-fold cross-validation on DATA; similarity: the
    best-cosine threshold that maximises F1 on DATA (needs --index).
    """
    from coe.errors import CoEError
    from coe.retrieval.gate_data import read_gate_data

    if kind not in ("classifier", "similarity"):
        raise fail(f"--kind must be classifier or similarity (got {kind!r})")
    chosen = parse_split(split)
    if kind == "similarity" and index is None:
        raise fail("--kind similarity needs --index DIR (the threshold is tuned on its search scores)")
    embedder = registry_embedder(load_registry(config))
    try:
        rows = read_gate_data(
            data, text_field, label_field, positive, split=chosen, test_percent=test_percent
        )
        header = _fit(kind, rows, embedder, index, out, label_field)
    except CoEError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(header.model_dump_json(indent=2) + "\n")
        return
    v = header.validation
    typer.echo(
        f"trained a {kind} gate on {header.train_size} questions ({header.positives} need retrieval): "
        f"threshold {header.threshold:.3f}; {header.params.get('fit', 'out-of-fold')}: "
        f"precision {v.precision}, recall {v.recall}, F1 {v.f1}, retrieve rate {v.retrieve_rate} -> {out}"
        if v
        else f"trained a {kind} gate -> {out}"
    )


def _fit(
    kind: str, rows: list[GateExample], embedder: Embedder, index: Path | None, out: Path, label_field: str
) -> GateHeader:
    from coe.data.splits import dataset_hash
    from coe.encoding.cache import EmbeddingCache
    from coe.retrieval.gate_data import best_threshold, binary_metrics
    from coe.retrieval.gate_model import GateHeader, fit_classifier, save_gate
    from coe.retrieval.index import DocIndex

    texts = [r.text for r in rows]
    labels = [r.label for r in rows]
    vectors = EmbeddingCache(embedder, max_chars=None).encode(texts)
    common = {
        "encoder": embedder.space,
        "label_field": label_field,
        "train_size": len(rows),
        "positives": sum(labels),
        "train_sha256": dataset_hash(texts, [int(label) for label in labels]),
    }
    if kind == "classifier":
        arrays, threshold, params, validation = fit_classifier(vectors, labels)
        header = GateHeader(
            kind="classifier", threshold=threshold, params=params, validation=validation, **common
        )
        save_gate(out, header, arrays)
        return header
    assert index is not None
    opened = DocIndex.open(index, embedder)
    best = [hits[0].score if hits else -1.0 for hits in opened.search_vectors(vectors, 1)]
    threshold = best_threshold(best, labels)
    validation = binary_metrics([s >= threshold for s in best], labels)
    params = {"fit": "in-sample (one parameter)", "index": str(index)}
    header = GateHeader(
        kind="similarity", threshold=threshold, params=params, validation=validation, **common
    )
    save_gate(out, header)
    return header
