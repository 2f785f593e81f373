"""``coe eval gate``: precision, recall and F1 of a retrieval gate, its retrieve rate and what it saves
against always retrieving, overall and per source of the questions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coe.cli.common import fail
from coe.cli.eval import eval_app
from coe.cli.index import ConfigOpt, load_registry, registry_embedder, to_json
from coe.cli.train_gate import (
    LabelFieldOpt,
    PositiveOpt,
    SplitOpt,
    TestPercentOpt,
    TextFieldOpt,
    parse_split,
)

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.encoding.embedder import Embedder
    from coe.retrieval.gate_data import GateExample
    from coe.retrieval.gates import Gate, Verdict
    from coe.retrieval.index import DocIndex


def register(app: typer.Typer) -> None:
    """Nothing to add to the top level: ``gate`` hangs on the ``eval`` group (coe/commands/eval.py)."""


@eval_app.command("gate")
def eval_gate(
    data: Annotated[list[Path], typer.Argument(help="JSONL files of labelled questions.")],
    gate: Annotated[
        str, typer.Option("--gate", help="never|always|category|similarity|classifier or a gate file")
    ],
    index: Annotated[Path, typer.Option("--index", help="Index folder from `coe index build`.")],
    label_field: LabelFieldOpt = "needs_retrieval",
    text_field: TextFieldOpt = "question",
    positive: PositiveOpt = None,
    source_field: Annotated[
        str, typer.Option("--source-field", help="Field to group by (default: the file's name).")
    ] = "source",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Override the gate's threshold.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 3,
    split: SplitOpt = "all",
    test_percent: TestPercentOpt = 30,
    latency_prompts: Annotated[
        int,
        typer.Option("--latency-prompts", min=0, help="Prompts timed one by one (encode + gate + search)."),
    ] = 20,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the gate over every question (batched; the category gate routes them with --config's router)."""
    from coe.errors import CoEError
    from coe.retrieval.gate_data import read_gate_data
    from coe.retrieval.gates import gate_from_spec
    from coe.retrieval.index import DocIndex

    chosen_split = parse_split(split)
    registry = load_registry(config)
    embedder = registry_embedder(registry)
    try:
        rows = read_gate_data(
            data, text_field, label_field, positive, source_field, chosen_split, test_percent
        )
        flags, categories = _categories(gate, registry, [r.text for r in rows])
        chosen = gate_from_spec(gate, embedder, flags, threshold)
        opened = DocIndex.open(index, embedder)
        result = _evaluate(chosen, rows, categories, embedder, opened, top_k)
        result["latency_ms"] = _latency(chosen, rows, categories, embedder, opened, top_k, latency_prompts)
    except CoEError as exc:
        raise fail(str(exc)) from None
    result = {"gate": chosen.kind, "spec": gate, "threshold": getattr(chosen, "threshold", None), **result}
    result.update({"data": [str(d) for d in data], "split": split, "index": str(index), "top_k": top_k})
    if as_json:
        sys.stdout.write(to_json(result) + "\n")
        return
    _print_table(result)


def _categories(
    gate: str, registry: CoEConfig | None, texts: list[str]
) -> tuple[dict[str, bool], list[str | None]]:
    """For the category gate: route every question with the registry's router, and its flags."""
    if gate != "category":
        return {}, [None] * len(texts)
    if registry is None:
        raise fail("--gate category needs --config: a registry whose categories have retrieve flags")
    from coe.orchestrator import CoE

    decisions = CoE(registry).route(texts)
    flags = {name: c.retrieve for name, c in registry.router.category_routes().items()}
    return flags, [d.category for d in decisions]


def _evaluate(
    gate: Gate,
    rows: list[GateExample],
    categories: list[str | None],
    embedder: Embedder,
    index: DocIndex,
    top_k: int,
) -> dict[str, Any]:
    from coe.encoding.cache import EmbeddingCache
    from coe.retrieval.gate_data import binary_metrics
    from coe.retrieval.gates import Probe

    texts = [r.text for r in rows]
    vectors = EmbeddingCache(embedder, max_chars=None).encode(texts)
    probe = Probe(texts, categories, embedder, lambda: index, top_k, vectors=vectors)
    started = time.perf_counter()
    verdicts = gate.decide(probe)
    batch_ms = (time.perf_counter() - started) * 1000
    gold = [r.label for r in rows]
    result: dict[str, Any] = binary_metrics([v.retrieve for v in verdicts], gold).model_dump()
    result["search_rate"] = round(sum(v.searched for v in verdicts) / len(rows), 4)
    result["gate_ms_per_prompt_batched"] = round(batch_ms / len(rows), 3)
    result["gold_hit_rate"] = _gold_hit_rate(rows, verdicts)
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({r.source for r in rows}):
        picked = [i for i, r in enumerate(rows) if r.source == source]
        metrics = binary_metrics([verdicts[i].retrieve for i in picked], [gold[i] for i in picked])
        by_source[source] = metrics.model_dump(exclude={"tp", "fp", "fn", "tn"})
    result["by_source"] = by_source
    return result


def _gold_hit_rate(rows: list[GateExample], verdicts: list[Verdict]) -> float | None:
    """Of the retrieved questions whose answering documents are known, the share whose kept chunks
    include one of them: is the index finding the right documents when the gate asks?"""
    known = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r.gold and v.retrieve]
    if not known:
        return None
    found = sum(bool(set(r.gold) & {h.doc_id for h in v.hits}) for r, v in known)
    return round(found / len(known), 4)


def _latency(
    gate: Gate,
    rows: list[GateExample],
    categories: list[str | None],
    embedder: Embedder,
    index: DocIndex,
    top_k: int,
    n: int,
) -> dict[str, float | int] | None:
    """What one request pays, as in `coe ask`: encode the prompt, gate, search when asked."""
    import numpy as np

    from coe.retrieval.gates import Probe

    times = []
    for row, category in list(zip(rows, categories, strict=True))[:n]:
        started = time.perf_counter()
        gate.decide(Probe([row.text], [category], embedder, lambda: index, top_k))
        times.append((time.perf_counter() - started) * 1000)
    if not times:
        return None
    return {
        "n": len(times),
        "p50": round(float(np.percentile(times, 50)), 2),
        "p99": round(float(np.percentile(times, 99)), 2),
    }


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    from coe.cli.common import out

    table = Table("source", "n", "positives", "precision", "recall", "F1", "retrieve rate", "saved vs always")
    rows = [("all", result), *result["by_source"].items()]
    for name, m in rows:
        cells = [m["precision"], m["recall"], m["f1"], m["retrieve_rate"], m["saved_vs_always"]]
        table.add_row(
            name, str(m["n"]), str(m["positives"]), *("-" if c is None else f"{c:.3f}" for c in cells)
        )
    out.print(f"gate {result['gate']} ({result['spec']}), threshold {result['threshold']}", highlight=False)
    out.print(table)
    lat = result.get("latency_ms")
    out.print(
        f"searched {result['search_rate']:.1%} of prompts; gold document among kept chunks: "
        f"{result['gold_hit_rate']}; one prompt: p50 {lat['p50'] if lat else '-'} ms",
        highlight=False,
    )
