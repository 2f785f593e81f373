"""Signals before routing: what each costs a request and what it saves.

Semantic cache (``cache_*`` functions; ``coe.signals.cache``):

* ``cache.miss_overhead_ms``: what the cache adds to a request it cannot answer: the lookup (exact
  key, then the nearest neighbour over the router's own vector among K entries of the same scope)
  plus storing the new answer, p50 and p99, per store (memory, SQLite, a real Redis on loopback) and
  per K. The router's encoding is not counted: the cache reuses it (no second encode).
* ``cache.hit_speedup``: real llama-server experts of the default registry: the same questions
  answered by their expert (warm, greedy, ``--max-tokens``), then asked again and replayed from the
  cache; p50 of each request's total and their ratio.

Guard and PII (``guard_rows`` / ``pii_rows``; ``coe.signals.stage``), per request, one request at a
time after a warm-up, one thread, as a server runs them:

* ``guard``: ``SignalStage.run`` with only the guard on the validation split of guard_prompts (the
  rows `coe train-guard` never trains on), with the registry's encoder; p50 / p99 ms overall and for
  short (< 500 characters) and long prompts, since the guard embeds a long text in several windows.
  Needs ``--guard FILE`` from `coe train-guard` (skipped with a note without one).
* ``pii``: ``SignalStage.run`` with only PII redaction (the default types) on pii_presidio sentences.

    .venv/bin/python bench/signals.py [--config experts.yaml] [--only cache,guard,pii] [--guard guard.npz]
                                      [--no-e2e] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _report import emit, machine, pct  # noqa: E402

from coe import CoE, load_config  # noqa: E402
from coe.config import CoEConfig  # noqa: E402
from coe.config.signals import (  # noqa: E402
    CacheConfig,
    GuardConfig,
    PiiConfig,
    SignalsConfig,
)
from coe.encoding.embedder import request_scope  # noqa: E402
from coe.signals.cache.runtime import SemanticCache, build_cache, router_embedding  # noqa: E402
from coe.signals.stage import SignalStage  # noqa: E402
from coe.types import Answer, Request  # noqa: E402

PAIRS = ROOT.parent / "shared" / "data" / "paraphrase_stsb" / "pairs.jsonl"
GUARD_DATA = ROOT.parent / "shared" / "data" / "guard_prompts" / "prompts.jsonl"
PII_DATA = ROOT.parent / "shared" / "data" / "pii_presidio" / "samples.jsonl"
QUESTIONS = [
    "Write a Python function that reverses a string",
    "What is the capital of France?",
    "Explain what a hash table is in two sentences",
    "Write a SQL query that counts the rows of a table named users",
    "How many days are there in a leap year?",
    "Give me three tips for writing clear emails",
    "What does the Unix command ls -la show?",
    "Summarise the plot of Romeo and Juliet in one sentence",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "experts.yaml")
    p.add_argument("--entries", type=int, nargs="+", default=[0, 100, 1000], help="entries per scope (K)")
    p.add_argument("--lookups", type=int, default=300, help="misses timed per store and K")
    p.add_argument("--max-tokens", type=int, default=64, help="answer length of the expert runs")
    p.add_argument("--no-e2e", action="store_true", help="skip the real-expert hit/miss comparison")
    p.add_argument("--only", default="cache,guard,pii", help="comma-separated: cache, guard, pii")
    p.add_argument("--guard", type=Path, default=ROOT / "guard.npz", help="from `coe train-guard`")
    p.add_argument("--guard-data", type=Path, default=GUARD_DATA)
    p.add_argument("--pii-data", type=Path, default=PII_DATA)
    p.add_argument("--requests", type=int, default=300, help="requests timed for guard and pii")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "signals.json")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def with_cache(config: CoEConfig, **cache: Any) -> CoEConfig:
    return config.model_copy(update={"signals": SignalsConfig(cache=CacheConfig(**cache))})


def sentences(n: int) -> list[str]:
    """Distinct declarative sentences (STS-B captions and headlines) to fill a scope with."""
    seen: dict[str, None] = {}
    with PAIRS.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for t in (row["a"], row["b"]):
                seen.setdefault(t, None)
            if len(seen) >= n:
                break
    return list(seen)[:n]


async def _fill(cache: SemanticCache, coe: CoE, texts: list[str], answer: Answer) -> None:
    for text in texts:
        request = Request.from_input(text)
        with request_scope():
            coe.decide([request])
            _, _, pending = await cache.lookup(request, "routed", router_embedding(coe.router, request))
        if pending is not None:
            await cache.put(pending, answer)


async def cache_miss_overhead(
    config: CoEConfig, store: str, url: str | None, k: int, lookups: int, pool: list[str]
) -> dict[str, Any]:
    """p50/p99 ms the cache adds to a miss with ``k`` entries in the request's scope."""
    answer = Answer(text="an answer of a few words " * 8, expert="general", finish_reason="stop")
    with tempfile.TemporaryDirectory() as tmp:
        extra: dict[str, Any] = {"store": store}
        if store == "sqlite":
            extra["path"] = str(Path(tmp) / "cache.db")
        if store == "redis":
            extra["url"] = url
        cfg = with_cache(config, max_entries=max(k + lookups, 1), **extra)
        coe = CoE(cfg)
        cache = build_cache(cfg, store, Path(tmp))
        assert cache is not None
        if store == "redis":
            await cache.store.clear()
        await _fill(cache, coe, pool[:k], answer)
        added, lookup_only, statuses = [], [], []
        for text in pool[k : k + lookups]:
            request = Request.from_input(text)
            with request_scope():
                coe.decide([request])  # the router's encode: not the cache's cost
                embedding = router_embedding(coe.router, request)
                t = time.perf_counter()
                trace, _, pending = await cache.lookup(request, "routed", embedding)
                looked = time.perf_counter()
            if pending is not None:
                await cache.put(pending, answer)
            done = time.perf_counter()
            statuses.append(trace.status)
            added.append((done - t) * 1000)
            lookup_only.append((looked - t) * 1000)
        await cache.aclose()
        return {
            "store": store,
            "entries": k,
            "misses": statuses.count("miss"),
            "hits": statuses.count("hit"),
            "added_ms_p50": round(sorted(added)[len(added) // 2], 3),
            "added_ms_p99": pct(added, 0.99),
            "lookup_ms_p50": round(sorted(lookup_only)[len(lookup_only) // 2], 3),
        }


async def cache_hit_speedup(config: CoEConfig, max_tokens: int) -> dict[str, Any]:
    """Real experts: each question answered (miss), then asked again (hit)."""
    async with CoE(with_cache(config, store="memory")) as coe:
        await coe.aask("warm up", expert="general", max_tokens=4, temperature=0)
        await coe.aask("warm up", expert="coder", max_tokens=4, temperature=0)
        miss, hit, experts = [], [], []
        for q in QUESTIONS:
            t = time.perf_counter()
            first = await coe.aask(q, max_tokens=max_tokens, temperature=0)
            miss.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            again = await coe.aask(q, max_tokens=max_tokens, temperature=0)
            hit.append((time.perf_counter() - t) * 1000)
            assert first.trace.cache is not None and first.trace.cache.status == "miss", first.trace.cache
            assert again.trace.cache is not None and again.trace.cache.status == "hit", again.trace.cache
            assert again.text == first.text
            experts.append(first.expert)
    miss_p50, hit_p50 = sorted(miss)[len(miss) // 2], sorted(hit)[len(hit) // 2]
    return {
        "questions": len(QUESTIONS),
        "experts": sorted(set(experts)),
        "max_tokens": max_tokens,
        "expert_ms_p50": round(miss_p50, 1),
        "hit_ms_p50": round(hit_p50, 2),
        "speedup_p50": round(miss_p50 / hit_p50, 1),
    }


async def cache_rows(args: argparse.Namespace, config: CoEConfig) -> dict[str, Any]:
    pool = sentences(max(args.entries) + args.lookups)
    rows = []
    stores: list[tuple[str, str | None]] = [("memory", None), ("sqlite", None)]
    redis_cm: Any = contextlib.nullcontext(None)
    try:
        from tests.support.redis import redis_binary, redis_server

        if redis_binary() is not None:
            redis_cm = redis_server()
    except ImportError:
        pass
    with redis_cm as running:
        if running is not None:
            stores.append(("redis", running[0]))
        for store, url in stores:
            for k in args.entries:
                rows.append(await cache_miss_overhead(config, store, url, k, args.lookups, pool))
    out: dict[str, Any] = {"miss_overhead": rows}
    if not args.no_e2e:
        out["hit_speedup"] = await cache_hit_speedup(config, args.max_tokens)
    return out


def show_cache(c: dict[str, Any]) -> None:
    print("| cache store | entries in scope | added to a miss p50 ms | p99 ms | lookup p50 ms |")
    print("|---|---|---|---|---|")
    for r in c["miss_overhead"]:
        cells = (r["store"], r["entries"], r["added_ms_p50"], r["added_ms_p99"], r["lookup_ms_p50"])
        print("| " + " | ".join(str(x) for x in cells) + " |")
    if "hit_speedup" in c:
        h = c["hit_speedup"]
        print(
            f"hit vs expert ({h['questions']} questions, {', '.join(h['experts'])}, "
            f"max_tokens {h['max_tokens']}): expert p50 {h['expert_ms_p50']} ms, "
            f"hit p50 {h['hit_ms_p50']} ms, {h['speedup_p50']}x faster"
        )


def _time_stage(stage: SignalStage, texts: list[str]) -> list[float]:
    stage.run(Request.from_input("warm up the encoder and the recognizers"))
    out = []
    for text in texts:
        request = Request.from_input(text)
        t = time.perf_counter()
        stage.run(request)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _row(name: str, ms: list[float], **extra: Any) -> dict[str, Any]:
    return {"signal": name, "requests": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), **extra}


def guard_rows(args: argparse.Namespace, config: CoEConfig) -> list[dict[str, Any]]:
    from coe.signals.guard.training import TrainSettings, read_guard_data, validation_split

    if not args.guard.is_file():
        print(f"note: no guard rows: {args.guard} missing (coe train-guard {args.guard_data} --out FILE)")
        return []
    guard = GuardConfig(model=str(args.guard.resolve()), action="flag")
    stage = SignalStage(config.model_copy(update={"signals": SignalsConfig(guard=guard)}))
    _, validation = validation_split(read_guard_data(args.guard_data), TrainSettings())
    texts = [r.text for r in validation][: args.requests]
    ms = _time_stage(stage, texts)
    short = [m for m, t in zip(ms, texts, strict=True) if len(t) < 500]
    long = [m for m, t in zip(ms, texts, strict=True) if len(t) >= 500]
    return [
        _row("guard", ms, prompts="guard_prompts validation split"),
        _row("guard (prompt < 500 chars)", short),
        _row("guard (prompt >= 500 chars)", long),
    ]


def pii_rows(args: argparse.Namespace, config: CoEConfig) -> list[dict[str, Any]]:
    stage = SignalStage(config.model_copy(update={"signals": SignalsConfig(pii=PiiConfig())}))
    lines = args.pii_data.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()][: args.requests]
    return [_row("pii (redact, default types)", _time_stage(stage, texts), prompts="pii_presidio sentences")]


def show_rows(rows: list[dict[str, Any]]) -> None:
    print("| signal | requests | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['signal']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} |")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    only = set(args.only.split(","))
    out: dict[str, Any] = {"config": str(args.config)}
    if "cache" in only:
        out["cache"] = await cache_rows(args, config)
    rows = (guard_rows(args, config) if "guard" in only else []) + (
        pii_rows(args, config) if "pii" in only else []
    )
    if rows:
        out["rows"] = rows
    return out


def show(r: dict[str, Any]) -> None:
    if "cache" in r:
        show_cache(r["cache"])
    if "rows" in r:
        show_rows(r["rows"])


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(asyncio.run(main(args)), args.out, args.json, show, started)
