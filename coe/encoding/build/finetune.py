"""Fine-tune a sentence encoder on labelled prompts (``coe finetune-encoder``), offline, on CPU.

Why: a frozen MiniLM places prompts by topic and wording, not by the labels a router needs; every
classifier on frozen vectors stops at the same ceiling, with errors between neighbouring MMLU domains
and on free-form writing prompts (docs/benchmarks). Teaching the encoder the labels moves
the prompts of one label together, and every embedding classifier (kNN, logreg, the cascade)
profits without changing.

Objective: cross-entropy of a cosine-softmax head (logits = ``scale`` x cosine between the
normalised sentence embedding and one normalised weight row per label; NormFace, Wang et al. 2017).
A cosine head shapes exactly the geometry the kNN and centroid classifiers read. The head starts at
the labels' centroids under the base encoder (linear probe, then fine-tune: Kumar et al. 2022, which
keeps the pretrained features from being distorted early and generalises better), and the word
embedding table stays frozen, so tokens that never occur in training keep their meaning.

What keeps it affordable on two cores: prompts are cut to ``max_tokens`` tokens; batches group
prompts of similar length; bf16 autocast where the CPU has bf16 instructions (AMX/AVX512-BF16);
optionally each epoch draws at most ``max_per_label`` prompts per label (a fresh draw per epoch).

Model selection never touches the caller's evaluation data: ``coe.data.splits.held_out`` (15% of the
training rows, keyed on the text) is never trained on, the epoch with the best accuracy there is kept,
and ``coe train-router`` tunes its cascade on the same rows.

The output folder is a sentence-transformers folder (``embedder: {path: DIR}``), plus
``coe_encoder.json`` (``FinetunedEncoder``: identity, data hash, settings, per-epoch history) and,
when the ``onnx`` package is installed, ``onnx/model.onnx`` for ``embedder.backend: onnx``
(see ``coe.encoding.build.export``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coe.encoding.embedder import CHARS_PER_TOKEN_CAP  # never tokenise text that truncation drops anyway
from coe.encoding.header import (
    HEADER_FILE,
    WEIGHTS_FILE,
    EpochStats,
    FinetunedEncoder,
    FinetuneSettings,
    OnnxExport,
    weights_hashes,
    weights_identity,
)
from coe.data.splits import dataset_hash, held_out

if TYPE_CHECKING:
    import torch


_INIT_PER_LABEL = 32
_WARMUP_SHARE = 0.06
_BUCKET_BATCHES = 50

Progress = Callable[[str], None]


def _cpu_has_bf16() -> bool:
    """bf16 autocast only pays on CPUs with bf16 instructions (AVX512-BF16 or AMX); elsewhere it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _epoch_sample(by_label: list[list[int]], cap: int | None, rng: random.Random) -> list[int]:
    chosen: list[int] = []
    for rows in by_label:
        chosen += rows if cap is None or len(rows) <= cap else rng.sample(rows, cap)
    return chosen


def _length_batches(
    rows: list[int], lengths: Sequence[int], size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle, then sort within chunks of ``_BUCKET_BATCHES`` batches by length: little padding, yet
    each batch still mixes labels and the batch order stays random."""
    rows = list(rows)
    rng.shuffle(rows)
    batches: list[list[int]] = []
    chunk = size * _BUCKET_BATCHES
    for start in range(0, len(rows), chunk):
        part = sorted(rows[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(batches)
    return batches


class _Run:
    """The model, its head and the text preparation shared by training and evaluation."""

    def __init__(self, base_folder: Path, labels: list[str], settings: FinetuneSettings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.settings = settings
        self.model = SentenceTransformer(str(base_folder), device="cpu")
        self.base_max_len = int(self.model.max_seq_length)  # restored on save: serving may read more
        self.model.max_seq_length = settings.max_tokens
        self.dim = int(self.model.get_embedding_dimension())
        self.head = torch.nn.Parameter(torch.zeros(len(labels), self.dim))
        self.model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
        bf16 = settings.precision == "bf16" or (settings.precision == "auto" and _cpu_has_bf16())
        self.precision: Literal["fp32", "bf16"] = "bf16" if bf16 else "fp32"

    def features(self, texts: list[str]) -> dict[str, Any]:
        cut = self.settings.max_tokens * CHARS_PER_TOKEN_CAP
        feats = self.model.preprocess([t[:cut] for t in texts])
        return {k: v for k, v in feats.items() if isinstance(v, self.torch.Tensor)}

    def embed(self, texts: list[str]) -> torch.Tensor:
        with self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(self.features(texts))["sentence_embedding"]
        return self.torch.nn.functional.normalize(out.float(), dim=-1)

    def logits(self, vectors: torch.Tensor) -> torch.Tensor:
        weights = self.torch.nn.functional.normalize(self.head, dim=-1)
        return self.settings.scale * vectors @ weights.T

    def embed_eval(self, texts: list[str], lengths: list[int]) -> torch.Tensor:
        """Embeddings without gradients, in length order for little padding, returned in input order."""
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = self.torch.zeros(len(texts), self.dim)
        with self.torch.inference_mode():
            for start in range(0, len(order), 64):
                chunk = order[start : start + 64]
                out[chunk] = self.embed([texts[i] for i in chunk])
        return out


def _token_lengths(run: _Run, texts: list[str]) -> list[int]:
    tokenizer = run.model.tokenizer
    cut = run.settings.max_tokens * CHARS_PER_TOKEN_CAP
    ids = tokenizer([t[:cut] for t in texts], truncation=True, max_length=run.settings.max_tokens)[
        "input_ids"
    ]
    return [len(x) for x in ids]


def finetune(
    texts: Sequence[str],
    labels: Sequence[str],
    base_folder: Path,
    base_name: str,
    out: Path,
    settings: FinetuneSettings | None = None,
    progress: Progress | None = None,
) -> FinetunedEncoder:
    """Fine-tune ``base_folder`` on (text, label) pairs and write the folder ``out``; return its header."""
    import torch

    from coe import __version__

    settings = settings or FinetuneSettings()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    texts = list(texts)
    split = _Split(texts, labels, settings.dev_share)
    run = _Run(base_folder, split.classes, settings)
    lengths = _token_lengths(run, texts)
    _init_head(run, texts, lengths, split.by_label, rng)
    per_epoch = len(_epoch_sample(split.by_label, settings.max_per_label, rng))
    optimizer, scheduler = _optimizer(run, settings.epochs * -(-per_epoch // settings.batch_size))
    say(
        f"fine-tuning {base_name} on {len(split.train)} prompts ({len(split.dev)} held out), "
        f"{settings.epochs} epoch(s) of {per_epoch} prompts, {run.precision}"
    )
    history: list[EpochStats] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        rows = _epoch_sample(split.by_label, settings.max_per_label, rng)
        loss = _train_epoch(run, texts, split.y, lengths, rows, optimizer, scheduler, rng, say)
        dev_acc, dev_loss = _evaluate(run, texts, split.y, lengths, split.dev)
        history.append(
            EpochStats(
                epoch=epoch,
                prompts=len(rows),
                seconds=round(time.perf_counter() - t0, 1),
                train_loss=round(loss, 4),
                dev_accuracy=dev_acc,
                dev_loss=dev_loss,
            )
        )
        say(
            f"epoch {epoch}/{settings.epochs}: {len(rows)} prompts in {history[-1].seconds:.0f} s, "
            f"loss {loss:.3f}" + (f", held-out accuracy {dev_acc:.4f}" if dev_acc is not None else "")
        )
        score = dev_acc if dev_acc is not None else float(epoch)  # no held-out share: keep the last
        if best is None or score > best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in run.model.state_dict().items()})
    assert best is not None
    run.model.load_state_dict(best[2])
    (out / HEADER_FILE).unlink(missing_ok=True)  # a half-written folder must not claim an identity
    onnx = _save(run, out, [texts[i] for i in (split.dev or split.train)[:64]])
    header = FinetunedEncoder(
        identity=weights_identity(out, base_name),
        weights=weights_hashes(out, [WEIGHTS_FILE, *([onnx.file] if onnx else [])]),
        base=base_name,
        labels=split.classes,
        train_size=len(split.train),
        dev_size=len(split.dev),
        data_sha256=dataset_hash(texts, labels),
        settings=settings,
        precision_used=run.precision,
        history=history,
        best_epoch=best[1],
        onnx=onnx,
        seconds=round(time.perf_counter() - started, 1),
        created_with=__version__,
    )
    (out / HEADER_FILE).write_text(header.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return header


class _Split:
    """Label indices, the held-out rows (never trained on) and the training rows of each label."""

    def __init__(self, texts: Sequence[str], labels: Sequence[str], dev_share: float) -> None:
        self.classes = sorted(set(labels))
        if len(self.classes) < 2:
            raise ValueError(f"fine-tuning needs at least two labels, found {self.classes}")
        index = {label: k for k, label in enumerate(self.classes)}
        self.y = [index[label] for label in labels]
        mask = held_out(texts, dev_share) if dev_share else [False] * len(texts)
        self.train = [i for i, d in enumerate(mask) if not d]
        self.dev = [i for i, d in enumerate(mask) if d]
        self.by_label = [[i for i in self.train if self.y[i] == k] for k in range(len(self.classes))]
        empty = [self.classes[k] for k, rows in enumerate(self.by_label) if not rows]
        if empty:
            raise ValueError(f"labels {empty} have no training prompt outside the held-out share")


def _optimizer(run: _Run, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on the head), linear warm-up then linear decay to zero."""
    torch = run.torch
    settings = run.settings
    encoder_params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": settings.learning_rate, "weight_decay": 0.01},
            {"params": [run.head], "lr": settings.head_learning_rate, "weight_decay": 0.0},
        ]
    )
    warmup = max(1, int(total_steps * _WARMUP_SHARE))
    decay = max(1, total_steps - warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / decay))
    )
    return optimizer, scheduler


def _init_head(
    run: _Run, texts: list[str], lengths: list[int], by_label: list[list[int]], rng: random.Random
) -> None:
    """Head rows = label centroids of the base encoder on a few prompts each (the linear-probe start)."""
    sample = [rng.sample(rows, min(len(rows), _INIT_PER_LABEL)) for rows in by_label]
    flat = [i for rows in sample for i in rows]
    vectors = run.embed_eval([texts[i] for i in flat], [lengths[i] for i in flat])
    start = 0
    with run.torch.no_grad():
        for k, rows in enumerate(sample):
            run.head[k] = vectors[start : start + len(rows)].mean(dim=0)
            start += len(rows)


def _train_epoch(
    run: _Run,
    texts: list[str],
    y: list[int],
    lengths: list[int],
    rows: list[int],
    optimizer: Any,
    scheduler: Any,
    rng: random.Random,
    say: Progress,
) -> float:
    torch = run.torch
    run.model.train()
    batches = _length_batches(rows, lengths, run.settings.batch_size, rng)
    total, seen, t0, next_note = 0.0, 0, time.perf_counter(), 60.0
    for batch in batches:
        vectors = run.embed([texts[i] for i in batch])
        target = torch.tensor([y[i] for i in batch])
        loss = torch.nn.functional.cross_entropy(run.logits(vectors), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(batch)
        seen += len(batch)
        if time.perf_counter() - t0 > next_note:  # a heartbeat: epochs take minutes on small machines
            say(f"  {seen}/{len(rows)} prompts, loss {total / seen:.3f}")
            next_note += 60.0
    return total / max(seen, 1)


def _evaluate(
    run: _Run, texts: list[str], y: list[int], lengths: list[int], rows: list[int]
) -> tuple[float | None, float | None]:
    if not rows:
        return None, None
    torch = run.torch
    vectors = run.embed_eval([texts[i] for i in rows], [lengths[i] for i in rows])
    with torch.no_grad():
        logits = run.logits(vectors)
        target = torch.tensor([y[i] for i in rows])
        loss = float(torch.nn.functional.cross_entropy(logits, target))
        accuracy = float((logits.argmax(dim=1) == target).float().mean())
    return round(accuracy, 4), round(loss, 4)


def _save(run: _Run, out: Path, sample: list[str]) -> OnnxExport | None:
    """The sentence-transformers folder (serving length restored), then its ONNX export."""
    from coe.encoding.build.export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    run.model.eval()
    run.model.max_seq_length = run.base_max_len
    run.model.save(str(out), create_model_card=False)
    return export_onnx(run.model, out, sample, run.settings.max_tokens)
