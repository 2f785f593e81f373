"""End-to-end answer quality with no retrieval, always retrieving, and the registry's gate.

On a sample of rag_gating questions from the test side of the gate split (never those a gate was
tuned on), the registry's router picks the expert once per question; then, for each condition, the
retrieval step (``coe.retrieval.Retriever.run``: gate, search, injection) prepares the prompt and
the chosen local expert (real llama.cpp: SmolLM2-135M / Gemma-3-270M) answers it.

Quality measure (``contains_gold``): the answer contains one of the question's gold answers after
normalisation (case, punctuation, thousands separators, "$", trailing ".00"). Only questions whose
shortest gold answer has at most --max-answer-chars characters are sampled, since containment says
nothing for FinanceBench's long free-text answers, and MT-bench prompts (no gold answer) are left
out. Half the sample needs retrieval, half does not (GSM8K, numeric answers). ``gold_in_context``
says how often the injected documents contained a gold answer at all: the ceiling retrieval gives.

Run from the repository root, after building the example index and gate (examples/rag/README.md)::

    .venv/bin/python bench/rag_e2e.py --n 40           # table; JSON in bench/results/rag_e2e.json
    .venv/bin/python bench/rag_e2e.py --n 40 --json    # the JSON object on stdout
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import hashlib
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = ("never", "always", "gated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RAG end to end: quality with no, always and gated retrieval.")
    p.add_argument("--config", type=Path, default=REPO / "examples" / "rag" / "experts.yaml")
    p.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "rag_gating" / "questions.jsonl"
    )
    p.add_argument("--n", type=int, default=40, help="questions (half need retrieval)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-answer-chars", type=int, default=40)
    p.add_argument("--test-percent", type=int, default=30, help="the gate split (as in coe train-gate)")
    p.add_argument("--concurrency", type=int, default=2, help="questions answered at once")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rag_e2e.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def normalise(text: str) -> str:
    text = text.lower().replace("$", " ")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,577 -> 1577
    text = re.sub(r"(?<=\d)\.0+\b", "", text)  # 1577.00 -> 1577
    return " ".join(re.sub(r"[^\w.%]+", " ", text).split()).strip(" .")


def contains_gold(answer: str, golds: list[str]) -> bool:
    said = f" {normalise(answer)} "
    return any(g and f" {g} " in said for g in (normalise(x) for x in golds))


def sample(args: argparse.Namespace) -> list[Any]:
    from coe.retrieval.gate_data import read_gate_data

    rows = read_gate_data([args.data], split="test", test_percent=args.test_percent)
    usable = [r for r in rows if r.answers and min(len(a) for a in r.answers) <= args.max_answer_chars]
    usable.sort(key=lambda r: hashlib.sha1(r.text.encode()).hexdigest())
    pos = [r for r in usable if r.label][: args.n // 2]
    neg = [r for r in usable if not r.label][: args.n - len(pos)]
    return pos + neg


async def answer_all(
    coe: Any, retrievers: dict[str, Any], rows: list[Any], args: argparse.Namespace
) -> list[dict]:
    from coe.types import Request

    decisions = await asyncio.to_thread(coe.route, [r.text for r in rows])
    limit = asyncio.Semaphore(args.concurrency)

    async def one(row: Any, decision: Any, condition: str) -> dict[str, Any]:
        request, trace = await asyncio.to_thread(
            retrievers[condition].run, Request.from_input(row.text), decision
        )
        async with limit:
            started = time.perf_counter()
            answer = await coe.aask(
                [m.model_dump() for m in request.messages],
                decision=decision,
                max_tokens=args.max_tokens,
                temperature=0.0,
            )
        context = request.text.replace(row.text, "") if trace.retrieve else ""  # the documents only
        return {
            "question": row.text,
            "source": row.source,
            "needs_retrieval": row.label,
            "condition": condition,
            "expert": answer.expert,
            "category": decision.category,
            "retrieve": trace.retrieve,
            "documents": trace.documents,
            "retrieval_error": trace.error,
            "correct": contains_gold(answer.text, row.answers),
            "gold_in_context": contains_gold(context, row.answers) if context else False,
            "prompt_tokens": answer.usage.prompt_tokens,
            "answer_ms": round((time.perf_counter() - started) * 1000, 1),
            "answer": answer.text,
        }

    jobs = [one(r, d, c) for c in CONDITIONS for r, d in zip(rows, decisions, strict=True)]
    return list(await asyncio.gather(*jobs))


def summarise(results: list[dict]) -> dict[str, Any]:
    def share(items: list[dict], key: str) -> float | None:
        return round(sum(bool(x[key]) for x in items) / len(items), 3) if items else None

    table = {}
    for condition in CONDITIONS:
        rows = [r for r in results if r["condition"] == condition]
        table[condition] = {
            "n": len(rows),
            "quality": share(rows, "correct"),
            "quality_needs_retrieval": share([r for r in rows if r["needs_retrieval"]], "correct"),
            "quality_self_contained": share([r for r in rows if not r["needs_retrieval"]], "correct"),
            "retrieve_rate": share(rows, "retrieve"),
            "gold_in_context": share([r for r in rows if r["needs_retrieval"]], "gold_in_context"),
            "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in rows), 1),
            "answer_ms_p50": round(statistics.median(r["answer_ms"] for r in rows), 1),
            "retrieval_errors": sum(bool(r["retrieval_error"]) for r in rows),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from _report import emit, machine

    from coe import CoE, load_config
    from coe.retrieval.retriever import Retriever

    config = load_config(args.config)
    if config.retrieval is None:
        sys.exit(f"{args.config}: no retrieval block; this benchmark needs one (see examples/rag)")
    retrievers = {
        "never": Retriever(
            config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"gate": "never"})})
        ),
        "always": Retriever(
            config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"gate": "always"})})
        ),
        "gated": Retriever(config),
    }
    rows = sample(args)
    machine_at_start = machine()
    started = time.perf_counter()
    answering = config.model_copy(update={"retrieval": None})  # the bench does the retrieval step itself
    with CoE(answering) as coe:
        results = coe.run(answer_all(coe, retrievers, rows, args))
    report = {
        "benchmark": "rag_e2e",
        "config": str(args.config),
        "gate": config.retrieval.gate,
        "questions": len(rows),
        "needs_retrieval": sum(r.label for r in rows),
        "max_tokens": args.max_tokens,
        "quality_measure": "gold answer contained in the answer (normalised)",
        "conditions": summarise(results),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    emit(report, args.out, args.json, show, machine_at_start)
    return 0


def show(report: dict[str, Any]) -> None:
    print(
        f"{report['questions']} questions ({report['needs_retrieval']} need retrieval), gate {report['gate']}"
    )
    head = (
        "condition",
        "quality",
        "needs retr.",
        "self-cont.",
        "retrieve rate",
        "gold in ctx",
        "prompt tok",
        "p50 ms",
    )
    print(" | ".join(head))
    for name, m in report["conditions"].items():
        cells = [m["quality"], m["quality_needs_retrieval"], m["quality_self_contained"], m["retrieve_rate"]]
        cells += [m["gold_in_context"], m["prompt_tokens_mean"], m["answer_ms_p50"]]
        print(" | ".join([name, *(str(c) for c in cells)]))
    print(f"wall {report['wall_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
