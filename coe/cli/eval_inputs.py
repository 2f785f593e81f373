"""Shared set-up of `coe eval router` and `coe calibrate`: load the artefact, its encoder and the
data, failing with a message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from coe.config.schema import ENCODER_THREADS


@dataclass
class Loaded:
    header: Any  # routers.category.artefact.ArtefactHeader
    model: Any  # routers.category.model.RoutingModel
    embedder: Any  # coe.encoding.embedder.Embedder | None (None: the model needs no encoder)
    prompts: Any  # coe.evaluation.data.LabelledPrompts
    load_ms: float  # reading the artefact, numpy import excluded
    train_overlap: int | None  # prompts the artefact was trained on (None: it did not record them)


def load_for_eval(
    data: Path,
    model: Path,
    text_field: str,
    label_field: str,
    fail: Callable[[str], typer.Exit],
    backend: str | None = None,
    threads: int | None = ENCODER_THREADS,
) -> Loaded:
    """``backend`` overrides the one the artefact was trained with (torch and onnx share vectors).
    ``threads`` defaults to ``embedder.threads``' default, so latency is what a registry serves: with
    two encoder threads on two cores, onnxruntime's spinning workers and faiss's OpenMP threads
    contend and kNN routing gets slower. Warns on stderr when the artefact
    was trained on some of the prompts: their accuracy, and a threshold picked on them, flatter it."""
    import numpy  # noqa: F401  (imported before timing: the load time is the artefact's own)

    from coe.encoding.embedder import Embedder
    from coe.encoding.files import encoder_space, resolve_recorded
    from coe.errors import CoEError
    from coe.evaluation.data import read_labelled
    from routers.category import artefact

    started = time.perf_counter()
    try:
        header, clf = artefact.load(model)
        load_ms = (time.perf_counter() - started) * 1000
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    try:
        prompts = read_labelled(data, text_field, label_field, known_labels=header.labels)
        embedder = None
        chosen = backend or header.backend or "torch"
        if header.encoder is not None and header.encoder_path:  # fine-tuned: the folder names its space
            folder = resolve_recorded(header.encoder_path, model.parent)
            embedder = Embedder(
                header.encoder,
                path=str(folder),
                backend=chosen,
                max_tokens=header.max_tokens,
                threads=threads,
            )
            if embedder.space != header.encoder:
                raise CoEError(
                    f"{model}: trained on {header.encoder!r} vectors, but the encoder at "
                    f"{folder} is now {embedder.space!r}; retrain with `coe train-router`"
                )
        elif header.encoder is not None:
            name = header.encoder.removesuffix("+static")
            if encoder_space(name, chosen) != header.encoder:
                raise CoEError(
                    f"{model}: trained on {header.encoder!r} vectors; backend {chosen!r} gives others"
                )
            embedder = Embedder(name, backend=chosen, max_tokens=header.max_tokens, threads=threads)
    except CoEError as exc:
        raise fail(str(exc)) from None
    overlap = artefact.train_overlap(model, prompts.texts)
    if overlap:
        typer.echo(
            f"warning: {overlap} of {len(prompts.texts)} prompts ({overlap / len(prompts.texts):.1%}) are in "
            f"{model}'s training data: results on them are not held-out estimates",
            err=True,
        )
    return Loaded(header, clf, embedder, prompts, load_ms, overlap)
