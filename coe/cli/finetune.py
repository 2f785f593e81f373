"""``coe finetune-encoder``: fine-tune the sentence encoder on labelled prompts (see
``coe.encoding.build.finetune``). torch and sentence-transformers are imported inside the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from coe.cli.common import fail
from coe.cli.router_tools import DataArg, LabelField, TextField


def register(app: typer.Typer) -> None:
    app.command("finetune-encoder")(finetune_encoder)


def _base_folder(base: str) -> Path:
    """A packaged encoder name, or a local sentence-transformers folder (a fine-tuned one included)."""
    from coe.encoding.files import resolve_encoder_dir

    if Path(base).expanduser().is_dir():
        return resolve_encoder_dir(base, path=base)
    return resolve_encoder_dir(base)


def _check_out(out: Path) -> None:
    """Never write over a folder that is not ours: only an empty one or an earlier fine-tune."""
    from coe.encoding.header import HEADER_FILE

    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / HEADER_FILE).is_file():
        raise fail(f"--out {out} is not empty and holds no fine-tuned encoder; choose an empty folder")


def finetune_encoder(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="folder to write (a sentence-transformers folder)")],
    text_field: TextField = "text",
    label_field: LabelField = "domain",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="passes over the (capped) data")] = 3,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=8, help="train on the first N tokens")] = 128,
    base: Annotated[
        str, typer.Option("--base", help="packaged encoder name or a local sentence-transformers folder")
    ] = "all-MiniLM-L6-v2",
    max_per_label: Annotated[
        int, typer.Option("--max-per-label", min=0, help="prompts per label and epoch (0: all)")
    ] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 32,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="peak learning rate")] = 4e-5,
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the folder's header as JSON")] = False,
) -> None:
    """Fine-tune the encoder so prompts of one label embed together; use it as embedder.path."""
    from pydantic import ValidationError

    from coe.encoding.build.finetune import finetune
    from coe.encoding.header import FinetuneSettings
    from coe.errors import CoEError
    from coe.evaluation.data import read_labelled

    _check_out(out)
    try:
        settings = FinetuneSettings(
            epochs=epochs,
            max_tokens=max_tokens,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_per_label=max_per_label or None,
            precision=precision,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise fail(problems) from None
    try:
        prompts = read_labelled(data, text_field, label_field)
        folder = _base_folder(base)
        header = finetune(
            prompts.texts,
            prompts.labels,
            folder,
            base,
            out,
            settings,
            lambda message: typer.echo(message, err=True),
        )
    except (CoEError, ValueError) as exc:
        raise fail(f"{data}: {exc}" if isinstance(exc, ValueError) else str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(header.model_dump(), indent=2) + "\n")
        return
    best = header.history[header.best_epoch - 1]
    onnx = (
        f"onnx/model.onnx ({header.onnx.precision}, cosine to torch >= {header.onnx.cosine_to_torch_min:.3f})"
        if header.onnx
        else "no ONNX export (pip install 'coe[onnx]')"
    )
    typer.echo(
        f"ok {out}: {header.identity}, epoch {header.best_epoch} kept "
        f"(held-out accuracy {best.dev_accuracy}), {onnx}, {header.seconds:.0f} s"
    )
    backend = "onnx" if header.onnx else "torch"
    typer.echo(
        f"use it: embedder: {{path: {out}, backend: {backend}}}; train a router on it with "
        f"`coe train-router DATA --encoder-path {out} --backend {backend}`"
    )
