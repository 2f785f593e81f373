"""Ray Serve scale-out on this machine: throughput with 1 and 2 replicas per expert, and the cost of
the Ray ingress against ``coe serve``, with the same requests in the same run.

1. A local Ray cluster (CPU) with ``coe deploy``'s applications for the default experts.yaml, 1
   replica of each expert, and ``coe serve`` on the same registry as a subprocess beside it.
2. Latency, one request at a time and alternating between the two servers so that both see the
   same load from the rest of the machine: the routed model ``coe`` and the pinned
   ``coe/expert/coder`` (no routing), ``--max-tokens-latency`` tokens, so the path dominates. Also
   the ingress's hop to an expert: the coder's Serve application through Ray's proxy against its
   llama-server directly (what a DeploymentHandle could save at most).
3. Throughput: ``--requests`` routed requests (code, math and general prompts in turn) with
   ``--concurrency`` in flight, ``--max-tokens`` each, first through ``coe serve`` (then stopped),
   then through Ray; then the registry is redeployed in place with 2 replicas of each expert and
   measured again.

Read the replica numbers with the machine in mind: llama.cpp on CPU is compute-bound, so a second
replica of each expert only helps while cores are idle. On 2 shared cores they are not; the numbers
show what scale-out costs, not what it gains, which needs more cores, nodes or GPUs.

    .venv/bin/python bench/ray_scale.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _report import emit, machine, pct  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ray_scale.json"
PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is 17 times 23?",
    "Tell me a short story about a dragon.",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "experts.yaml")
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-tokens-latency", type=int, default=1)
    p.add_argument("--latency-samples", type=int, default=20)
    p.add_argument("--ray-cpus", type=int, default=6, help="logical CPUs of the local Ray cluster")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p.parse_args()


async def wait_ready(base: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(base + "/readyz", timeout=10)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"{base} not ready after {timeout_s:g}s")


async def latency(bases: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """p50 per server and model, requests alternating between the servers; for the routed model also
    the route stage as the server's own trace measured it (the encoder's share of the time)."""
    times: dict[tuple[str, str], list[float]] = {
        (server, model): [] for server in bases for model in ("coe", "coe/expert/coder")
    }
    route: dict[str, list[float]] = {server: [] for server in bases}
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        for i in range(args.latency_samples + 2):
            for (server, model), samples in times.items():
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": PROMPTS[0]}],
                    "max_tokens": args.max_tokens_latency,
                    "temperature": 0.0,
                    "coe": {"trace": True},
                }
                t = time.perf_counter()
                resp = await client.post(bases[server] + "/v1/chat/completions", json=body)
                resp.raise_for_status()
                if i >= 2:  # two warm-up rounds
                    samples.append((time.perf_counter() - t) * 1000)
                    if model == "coe":
                        route[server].append(resp.json()["coe"]["timings_ms"]["route"])
    out: dict[str, dict[str, float]] = {server: {} for server in bases}
    for (server, model), samples in times.items():
        key = "routed_p50_ms" if model == "coe" else "pinned_p50_ms"
        out[server][key] = round(statistics.median(samples), 1)
    for server, samples in route.items():
        out[server]["route_stage_p50_ms"] = round(statistics.median(samples), 1)
    return out


async def throughput(base: str, args: argparse.Namespace) -> dict[str, Any]:
    gate = asyncio.Semaphore(args.concurrency)
    latencies: list[float] = []
    tokens, errors, experts = 0, 0, {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens, errors
        body = {
            "model": "coe",
            "messages": [{"role": "user", "content": f"{PROMPTS[i % 3]} ({i})"}],
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
        }
        async with gate:
            t = time.perf_counter()
            resp = await client.post(base + "/v1/chat/completions", json=body)
            if resp.status_code != 200:
                errors += 1
                return
            latencies.append((time.perf_counter() - t) * 1000)
            tokens += resp.json()["usage"]["completion_tokens"]
            expert = resp.headers["x-coe-expert"]
            experts[expert] = experts.get(expert, 0) + 1

    async with httpx.AsyncClient(trust_env=False, timeout=300) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(args.requests)))
        wall = time.perf_counter() - started
    return {
        "ok": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 3),
        "completion_tokens_per_s": round(tokens / wall, 2),
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "wall_s": round(wall, 1),
        "by_expert": experts,
    }


async def expert_hop(expert_url: str, direct_url: str, model: str, samples: int) -> dict[str, float]:
    """What the ingress pays to reach an expert through Ray's proxy and the expert's replica, against
    calling its llama-server directly: the part a DeploymentHandle could save at most."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 1}
    times: dict[str, list[float]] = {"proxy": [], "direct": []}
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        for i in range(samples + 2):
            for kind, url in (("proxy", expert_url), ("direct", direct_url)):
                t = time.perf_counter()
                (await client.post(url + "/chat/completions", json=body)).raise_for_status()
                if i >= 2:
                    times[kind].append((time.perf_counter() - t) * 1000)
    proxy, direct = statistics.median(times["proxy"]), statistics.median(times["direct"])
    return {"expert_via_proxy_p50_ms": round(proxy, 1), "expert_direct_p50_ms": round(direct, 1)}


def replica_server_url(app: str) -> str:
    """The loopback URL of the llama-server that a replica of ``app`` started (its child process)."""
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = (entry / "stat").read_text().rsplit(") ", 1)[-1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if args[0].endswith(b"llama-server") and parent.startswith(f"ray::ServeReplica:{app}:".encode()):
            return f"http://127.0.0.1:{int(args[args.index(b'--port') + 1])}/v1"
    raise SystemExit(f"no llama-server found under a replica of {app}")


def start_coe_serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "coe",
        "serve",
        "-c",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, cwd=REPO)


def with_replicas(config: Any, replicas: int) -> Any:
    from coe.config import ExpertDeploy, ExpertRayDeployment

    deploy = ExpertDeploy(ray=ExpertRayDeployment(replicas=replicas))
    experts = {
        name: e.model_copy(update={"deploy": deploy}) if e.serve is not None else e
        for name, e in config.experts.items()
    }
    return config.model_copy(update={"experts": experts})


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from coe.config import DeployConfig, IngressRayDeployment, load_config
    from coe.deploy import ray as coe_ray
    from coe.experts.process import free_port

    config = load_config(args.config)
    config = config.model_copy(update={"deploy": DeployConfig(ray=IngressRayDeployment(port=free_port()))})
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Ray's driver logging would print each request
    coe_ray.connect(
        "local", num_cpus=args.ray_cpus, object_store_memory=100 * 1024**2, include_dashboard=False
    )
    out: dict[str, Any] = {}
    serve_port = free_port()
    proc = start_coe_serve(args.config, serve_port)
    try:
        started = time.perf_counter()
        deployed = coe_ray.deploy(with_replicas(config, 1), timeout_s=600)
        deploy_s = round(time.perf_counter() - started, 1)
        bases = {
            "coe_serve": f"http://127.0.0.1:{serve_port}",
            "ray_replicas_1": deployed.url.removesuffix("/v1"),
        }
        for base in bases.values():
            asyncio.run(wait_ready(base))
        out.update(asyncio.run(latency(bases, args)))
        out["ray_replicas_1"]["deploy_s"] = deploy_s
        direct = replica_server_url(deployed.experts["coder"].app)
        model = config.experts["coder"].model or "coder"
        hop = expert_hop(deployed.expert_url("coder"), direct, model, args.latency_samples)
        out["ray_replicas_1"].update(asyncio.run(hop))
        out["coe_serve"].update(asyncio.run(throughput(bases["coe_serve"], args)))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        out["ray_replicas_1"].update(asyncio.run(throughput(bases["ray_replicas_1"], args)))

        started = time.perf_counter()
        deployed = coe_ray.deploy(with_replicas(config, 2), timeout_s=600)
        out["ray_replicas_2"] = {"deploy_s": round(time.perf_counter() - started, 1)}
        out["ray_replicas_2"].update(asyncio.run(throughput(bases["ray_replicas_1"], args)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        serve.shutdown()
        ray.shutdown()
    return out


def main() -> dict[str, Any]:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "max_tokens_latency": args.max_tokens_latency,
        "latency_samples": args.latency_samples,
    }
    result.update(run(args))
    serve_, ray1, ray2 = result["coe_serve"], result["ray_replicas_1"], result["ray_replicas_2"]
    result["ingress_overhead_routed_ms"] = round(ray1["routed_p50_ms"] - serve_["routed_p50_ms"], 1)
    result["ingress_overhead_pinned_ms"] = round(ray1["pinned_p50_ms"] - serve_["pinned_p50_ms"], 1)
    result["ingress_overhead_ratio_p50"] = round(ray1["routed_p50_ms"] / serve_["routed_p50_ms"], 3)
    result["ingress_route_stage_ms"] = round(ray1["route_stage_p50_ms"] - serve_["route_stage_p50_ms"], 1)
    result["expert_hop_ms"] = round(ray1["expert_via_proxy_p50_ms"] - ray1["expert_direct_p50_ms"], 1)
    result["speedup_2_vs_1_replicas"] = round(ray2["requests_per_s"] / ray1["requests_per_s"], 3)
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = [("coe serve", result["coe_serve"]), ("ray, 1 replica", result["ray_replicas_1"])]
    rows.append(("ray, 2 replicas", result["ray_replicas_2"]))
    heads = ("routed p50", 12), ("pinned p50", 12), ("req/s", 8), ("tok/s", 8), ("p50", 9), ("p99", 9)
    print(f"{'setup':<16}" + "".join(f"{h:>{w}}" for h, w in heads) + f"{'errors':>8}")
    for name, r in rows:
        latency = "".join(
            f"{f'{r[k]:.1f}ms' if k in r else '-':>12}" for k in ("routed_p50_ms", "pinned_p50_ms")
        )
        print(
            f"{name:<16}{latency}{r['requests_per_s']:>8.2f}{r['completion_tokens_per_s']:>8.1f}"
            f"{r['p50_ms']:>7.0f}ms{r['p99_ms']:>7.0f}ms{r['errors']:>8}"
        )
    res = result
    print(
        f"ray ingress vs coe serve (p50, routed): {res['ingress_overhead_routed_ms']:+} ms "
        f"(x{res['ingress_overhead_ratio_p50']}); route stage {res['ingress_route_stage_ms']:+} ms; "
        f"ingress -> expert through Ray's proxy {res['expert_hop_ms']:+} ms"
    )
    print(f"2 vs 1 replicas per expert: x{res['speedup_2_vs_1_replicas']} requests/s (machine below)")


if __name__ == "__main__":
    started = machine()
    emit(main(), RESULTS, "--json" in sys.argv, print_table, started)
