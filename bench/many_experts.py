"""Many experts on one base: N LoRA adapter experts of SmolLM2-135M served by one llama-server process
against one process per expert: resident memory, start time, p50/p99 latency of requests that stay on
one adapter against requests that switch adapter every time, and throughput at concurrency 4 over
mixed adapters.

Setup: the packaged SmolLM2-135M (Q4_1) with N adapters written by tests/support/adapters.py (rank 4
on attn_q and attn_output of every block, f16, seeds 1..N). ``shared``: the N experts differ only in
``serve.lora``, so CoE runs one process loading all N and sets every adapter's scale per request.
``separate``: the same N experts, each in its own process with its one adapter (their serve blocks
are made to differ by ``startup_timeout_s``, which changes nothing else). One thread per process
(two made the shared process spin on a 2-core machine shared with other work: ten times slower);
``--parallel`` slots in the shared process, one slot per separate process. Requests go through
``CoE.call_expert`` (the pool, the request body with its ``lora`` scales, the HTTP call), distinct
prompts, ``--max-tokens`` tokens at temperature 0.

Memory is read from /proc for every process: RSS (each process's resident pages, the mapped GGUF
counted once per process), PSS (shared pages split among the processes that map them, other users'
processes mapping the same packaged GGUF included: the memory the machine spends, but it moves with
whatever else runs) and anonymous memory (KV cache, buffers, loaded adapters: what each process adds
beyond the mapped weights), after the traffic (the KV cache pages the requests touched are
resident by then). The base alone (one process, no adapter, the shared process's slots, the same
traffic) is the yardstick of the target "shared process ≤ 1.5× the base alone at N = 24". A separate
process has one slot, the shared one ``--parallel``: each layout as it would be deployed.

    .venv/bin/python bench/many_experts.py                 # table; JSON to bench/results/many_experts.json
    .venv/bin/python bench/many_experts.py --json          # one JSON object on stdout
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)

from coe import CoE  # noqa: E402
from coe.config import CoEConfig, parse_config  # noqa: E402
from coe.types import Request  # noqa: E402
from tests.support.adapters import write_loras  # noqa: E402
from tests.support.registries import SMOLLM  # noqa: E402

THINGS = [
    "fruit",
    "river",
    "planet",
    "colour",
    "metal",
    "bird",
    "tree",
    "city",
    "sport",
    "tool",
    "fish",
    "song",
]
ASKS = [
    "Name a {}.",
    "Describe a {} in one sentence.",
    "What is your favourite {}?",
    "Write one word about a {}.",
]
PROMPTS = [a.format(t) for t in THINGS for a in ASKS]  # 48 distinct prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 8, 24], help="adapter experts")
    p.add_argument("--requests", type=int, default=32, help="per latency pattern and for throughput")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--parallel", type=int, default=4, help="slots of the shared process")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-separate", type=int, default=24, help="largest N run as separate processes")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "many_experts.json")
    p.add_argument("--json", action="store_true", help="print the JSON object instead of the table")
    return p.parse_args(argv)


def registry(adapters: list[Path], *, shared: bool, parallel: int) -> CoEConfig:
    experts: dict[str, Any] = {}
    for i, path in enumerate(adapters):
        serve = {"engine": "llamacpp", "gguf": SMOLLM, "ctx": 512, "parallel": parallel if shared else 1}
        serve["threads"] = 1  # more makes llama.cpp spin when the cores are shared (batch_swaps.md)
        if path.name != "none":
            serve["lora"] = str(path)
        if not shared:
            serve["startup_timeout_s"] = 120.0 + i  # a serve block of its own: a process of its own
        experts[f"e{i}"] = {"serve": serve, "timeout_s": 600, "params": {"temperature": 0.0}}
    data = {
        "version": 1,
        "experts": experts,
        "router": {"categories": {"any": {"expert": "e0", "examples": ["hi"]}}},
    }
    return parse_config(yaml.safe_dump(data))


def memory_mb(pids: list[int]) -> dict[str, float]:
    """RSS, PSS and anonymous memory summed over the processes, in MB (/proc/PID/smaps_rollup)."""
    kb = {"Rss": 0, "Pss": 0, "Anonymous": 0}
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in kb:
                kb[key] += int(value.split()[0])
    return {
        "rss_mb": round(kb["Rss"] / 1024, 1),
        "pss_mb": round(kb["Pss"] / 1024, 1),
        "anon_mb": round(kb["Anonymous"] / 1024, 1),
    }


def cost(switch: list[float], stay: list[float]) -> float:
    """How much slower the median switching request is than the median staying one, in %."""
    return round(100 * (statistics.median(switch) / statistics.median(stay) - 1), 1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _latencies(
    coe: CoE, experts: list[str], n: int, max_tokens: int, cache: bool = True
) -> list[float]:
    out = []
    for i in range(n):
        params: dict[str, Any] = (
            {"max_tokens": max_tokens} if cache else {"max_tokens": max_tokens, "cache_prompt": False}
        )
        request = Request.from_input(PROMPTS[i % len(PROMPTS)], params=params)
        t = time.perf_counter()
        answer = await coe.call_expert(experts[i % len(experts)], request)
        assert answer.ok, answer.error
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _throughput(coe: CoE, experts: list[str], n: int, max_tokens: int, clients: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            request = Request.from_input(PROMPTS[i % len(PROMPTS)], params={"max_tokens": max_tokens})
            answer = await coe.call_expert(experts[i % len(experts)], request)
            assert answer.ok, answer.error

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return round(n / (time.perf_counter() - t), 2)


def measure(config: CoEConfig, args: argparse.Namespace) -> dict[str, Any]:
    with CoE(config) as coe:
        names = list(config.experts)
        coe.route("hi")  # the router is built once, outside the timings
        t = time.perf_counter()
        loaded = coe.run(coe.pool.scheduler.warm())
        start_s = round(time.perf_counter() - t, 2)
        assert len(loaded) == len(coe.pool.groups.hosts(names)), coe.pool.supervisor.error(names[0])
        pids = list(coe.pool.running.values())
        result: dict[str, Any] = {"processes": len(pids), "start_s": start_s, "idle": memory_mb(pids)}
        # Warm-up: every process answers twice first (its first request allocates its buffers).
        coe.run(_latencies(coe, names, max(4, 2 * len(names)), args.max_tokens))
        stay = coe.run(_latencies(coe, names[:1], args.requests, args.max_tokens))
        switch = coe.run(_latencies(coe, names, args.requests, args.max_tokens))
        # Without llama-server's prompt cache: what the switch itself costs (a prefix cached under one
        # adapter is of no use to another, so staying reuses the chat template's system turn and
        # switching does not).
        stay_cold = coe.run(_latencies(coe, names[:1], args.requests, args.max_tokens, cache=False))
        switch_cold = coe.run(_latencies(coe, names, args.requests, args.max_tokens, cache=False))
        rps = coe.run(_throughput(coe, names, args.requests, args.max_tokens, args.concurrency))
        result.update(
            stay_p50_ms=pct(stay, 0.5), stay_p99_ms=pct(stay, 0.99),
            switch_p50_ms=pct(switch, 0.5), switch_p99_ms=pct(switch, 0.99),
            switch_cost_pct=cost(switch, stay),
            no_prompt_cache={
                "stay_p50_ms": pct(stay_cold, 0.5), "switch_p50_ms": pct(switch_cold, 0.5),
                "switch_cost_pct": cost(switch_cold, stay_cold),
            },
            throughput_rps=rps, after=memory_mb(pids),
        )  # fmt: skip
        return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = machine()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = write_loras(Path(tmp), max(args.n))
        base = measure(registry([Path("none")], shared=True, parallel=args.parallel), args)
        for n in args.n:
            for layout in ("shared", "separate"):
                if layout == "separate" and n > args.max_separate:
                    continue
                config = registry(adapters[:n], shared=layout == "shared", parallel=args.parallel)
                rows.append({"n": n, "layout": layout, **measure(config, args)})
                print(f"n={n} {layout}: {rows[-1]}", file=sys.stderr)
        size = adapters[0].stat().st_size
    result = {
        "model": SMOLLM,
        "adapter": {"rank": 4, "targets": ["attn_q", "attn_output"], "dtype": "f16", "bytes": size},
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "parallel_shared": args.parallel,
        "base_alone": base,
        "rows": rows,
    }
    emit(result, args.out, args.json, show, started)


def show(result: dict[str, Any]) -> None:
    alone = result["base_alone"]
    base = alone["after"]  # after the same traffic: the KV cache pages it touched are resident too
    print(
        f"base alone: RSS {base['rss_mb']} MB, PSS {base['pss_mb']} MB, anon {base['anon_mb']} MB "
        f"after traffic, started in {alone['start_s']} s"
    )
    cols = ["N", "layout", "processes", "start s", "RSS MB", "PSS MB", "anon MB", "RSS / base alone"]
    cols += [
        "stay p50/p99 ms",
        "switch p50/p99 ms",
        "switch cost (p50)",
        "same, no prompt cache",
        "req/s at 4",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in result["rows"]:
        mem = r["after"]
        cells = [
            r["n"],
            r["layout"],
            r["processes"],
            r["start_s"],
            mem["rss_mb"],
            mem["pss_mb"],
            mem["anon_mb"],
        ]
        cells += [f"{mem['rss_mb'] / base['rss_mb']:.2f}×", f"{r['stay_p50_ms']} / {r['stay_p99_ms']}"]
        cells += [f"{r['switch_p50_ms']} / {r['switch_p99_ms']}", f"{r['switch_cost_pct']:+.1f}%"]
        cells += [f"{r['no_prompt_cache']['switch_cost_pct']:+.1f}%"]
        cells += [r["throughput_rps"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
