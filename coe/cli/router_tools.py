"""``coe train-router``, ``coe calibrate`` and ``coe distil-encoder``: turn labelled prompts into a
router artefact, pick its ``min_confidence``, and build the static encoder. Heavy imports (numpy,
torch, sklearn, faiss) happen inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from coe.cli.common import fail

if TYPE_CHECKING:
    from coe.encoding.embedder import Embedder

DataArg = Annotated[Path, typer.Argument(help="JSONL file, one labelled prompt per line")]
TextField = Annotated[str, typer.Option("--text-field", help="JSON key holding the prompt")]
LabelField = Annotated[str, typer.Option("--label-field", help="JSON key holding the category")]
ModelOpt = Annotated[Path, typer.Option("--model", help="artefact written by `coe train-router`")]
EncoderOpt = Annotated[str, typer.Option("--encoder", help="embedder.model to encode with")]
CLASSIFIER_HELP = (
    "knn | logreg | centroid (embeddings), tfidf (no encoder), cascade (tfidf, then knn when unsure)"
)


def register(app: typer.Typer) -> None:
    app.command("train-router")(train_router)
    app.command("calibrate")(calibrate)
    app.command("distil-encoder")(distil_encoder)


def train_router(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="where to write the .npz artefact")],
    text_field: TextField = "text",
    label_field: LabelField = "domain",
    classifier: Annotated[str, typer.Option("--classifier", help=CLASSIFIER_HELP)] = "knn",
    encoder: EncoderOpt = "all-MiniLM-L6-v2",
    backend: Annotated[str, typer.Option("--backend", help="torch | onnx | onnx-int8 | static")] = "onnx",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="encode the first N tokens (0: all)")] = 128,
    encoder_path: Annotated[
        Path | None,
        typer.Option(
            "--encoder-path", help="encoder folder (embedder.path), e.g. from `coe finetune-encoder`"
        ),
    ] = None,
    extra_encoder: Annotated[
        list[Path] | None,
        typer.Option(
            "--extra-encoder",
            help="cascade only: a further `coe finetune-encoder` folder whose kNN votes with the main "
            "encoder's (repeatable; kept only if it helps on the held-out share)",
        ),
    ] = None,
) -> None:
    """Train a router on labelled prompts; reference the artefact from experts.yaml as router.model."""
    import time

    from coe.encoding.embedder import Embedder
    from coe.encoding.files import BACKENDS
    from coe.errors import CoEError
    from coe.evaluation.data import read_labelled
    from routers.category.model import MODEL_KINDS
    from routers.category.training import train

    if classifier not in MODEL_KINDS:
        raise fail(f"unknown classifier {classifier!r}; expected one of: {', '.join(MODEL_KINDS)}")
    if backend not in BACKENDS:
        raise fail(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    if extra_encoder and classifier != "cascade":
        raise fail(f"--extra-encoder adds members to a cascade; --classifier is {classifier!r}")
    started = time.perf_counter()
    try:
        prompts = read_labelled(data, text_field, label_field)
        if len(prompts.classes) < 2:
            raise fail(f"{data}: needs at least two labels, found {prompts.classes}")
        embedder = (
            None
            if classifier == "tfidf"
            else Embedder(
                encoder,
                path=str(encoder_path) if encoder_path else None,
                backend=backend,
                max_tokens=max_tokens or None,
            )
        )
        extras = [_extra_encoder(folder, backend) for folder in extra_encoder or []]
        header, model = train(prompts, embedder, classifier, out, max_tokens or None, extras)
    except CoEError as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"ok {out}: {header.classifier} on {header.train_size} prompts, labels {', '.join(header.labels)}"
        f" ({time.perf_counter() - started:.0f} s)"
    )
    if extras:
        kept = getattr(model, "extras", [])
        tuning = header.params.get("tuning", {})
        evidence = (
            f"held-out accuracy {tuning['holdout_accuracy_both']:.4f} with them, "
            f"{tuning['holdout_accuracy_without_extras']:.4f} without"
            if "extra_share" in tuning
            else "too few prompts to tune: default share"
        )
        share = kept[0].share if kept else 0.0
        typer.echo(f"extra encoders: {len(kept)} of {len(extras)} kept (share {share}; {evidence})")


def _extra_encoder(folder: Path, backend: str) -> Embedder:
    """An extra cascade member's encoder; only a fine-tuned folder names its space unambiguously."""
    from coe.encoding.embedder import Embedder
    from coe.errors import CoEError

    try:
        embedder = Embedder(path=str(folder), backend=backend)
    except CoEError as exc:
        raise CoEError(f"--extra-encoder {folder}: {exc}") from None
    if embedder.files.identity is None:
        raise CoEError(f"--extra-encoder {folder}: not a `coe finetune-encoder` folder (no coe_encoder.json)")
    return embedder


def calibrate(
    data: DataArg,
    model: ModelOpt,
    text_field: TextField = "text",
    label_field: LabelField = "domain",
    target_accuracy: Annotated[
        float | None, typer.Option("--target-accuracy", help="accuracy wanted on routed prompts")
    ] = None,
    target_fallback_rate: Annotated[
        float | None, typer.Option("--target-fallback-rate", help="largest share sent to the fallback")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pick fallback.min_confidence on labelled data; report accuracy and fallback rate before/after."""
    if (target_accuracy is None) == (target_fallback_rate is None):
        raise fail("give exactly one of --target-accuracy and --target-fallback-rate")
    target = target_accuracy if target_accuracy is not None else target_fallback_rate
    if target is None or not 0 <= target <= 1:
        raise fail(f"the target must be between 0 and 1 (got {target})")
    import numpy as np

    from coe.cli.eval_inputs import load_for_eval
    from routers.category.evaluation import calibrate_threshold, evaluate

    run = load_for_eval(data, model, text_field, label_field, fail, threads=None)  # throughput, not latency
    probs = run.model.predict(run.prompts.texts, run.embedder).probs
    index = {label: i for i, label in enumerate(run.header.labels)}
    y = np.array([index[label] for label in run.prompts.labels])
    threshold = calibrate_threshold(
        probs.argmax(axis=1) == y, probs.max(axis=1), target_accuracy, target_fallback_rate
    )
    before = evaluate(run.prompts, run.header.labels, probs, [], 0.0)
    after = evaluate(run.prompts, run.header.labels, probs, [], threshold)
    mode: Literal["accuracy", "fallback_rate"] = (
        "accuracy" if target_accuracy is not None else "fallback_rate"
    )
    reached = (
        (after.accuracy_routed or 0.0) >= target if mode == "accuracy" else after.fallback_rate <= target
    )
    report: dict[str, Any] = {
        "min_confidence": threshold,
        "target": {mode: target},
        "reached": reached,
        "before": {"accuracy": before.accuracy_routed, "fallback_rate": before.fallback_rate},
        "after": {"accuracy": after.accuracy_routed, "fallback_rate": after.fallback_rate},
        "yaml": f"router.fallback.min_confidence: {threshold:.4f}",
        "train_overlap": run.train_overlap,
    }
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    typer.echo(
        f"min_confidence: {threshold:.4f}" + ("" if reached else f" (target {mode} {target} not reached)")
    )
    for name in ("before", "after"):
        r = report[name]
        accuracy = "n/a (all fall back)" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        typer.echo(f"{name}: accuracy on routed prompts {accuracy}, fallback rate {r['fallback_rate']:.3f}")
    typer.echo(f"put it in experts.yaml as {report['yaml']}")


def distil_encoder(
    model: Annotated[
        str, typer.Option("--model", help="the sentence encoder to distil")
    ] = "all-MiniLM-L6-v2",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder to write (default: the CoE cache, where backend static looks)"),
    ] = None,
    dims: Annotated[int, typer.Option("--dims", help="dimensions kept by PCA")] = 256,
) -> None:
    """Distil a static encoder (embedder.backend: static) from a local encoder, offline, once."""
    from coe.encoding.build.distil import distil_static
    from coe.encoding.files import resolve_encoder_dir, static_cache_dir
    from coe.errors import CoEError

    try:
        source = resolve_encoder_dir(model)
        target = out or static_cache_dir(model)
        header = distil_static(source, model, target, dims)
    except CoEError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"ok {target}: {header.vocab_size} tokens x {header.dims} dims in {header.seconds:.0f} s")
