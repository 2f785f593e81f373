"""Ray Serve on several nodes: experts placed by their resources, a worker node lost under load, a node
added back. One machine runs the whole cluster (``ray.cluster_utils.Cluster``: a head and one raylet
per worker node, each with its own logical CPUs and custom resources), so scheduling, placement and
node failure are Ray's own; only the cores are shared.

1. Nodes: the head offers ``coe_ingress`` (the ingress goes there), worker A ``coe_node_a`` and
   ``coe_pool``, worker B ``coe_node_b`` and ``coe_pool``.
2. The default registry with ``deploy.ray.resources``: coder pinned to A, general pinned to B, and a
   fallback expert ``backup`` (general's model; the router's ``fallback.expert``) with two replicas
   on ``coe_pool``, so one on each worker.
3. Routed load through the ingress on 127.0.0.1 (code, math and general prompts in turn,
   ``--concurrency`` in flight, at most ``--max-requests``). After ``--before`` answers worker A is
   removed (its raylet and everything on it killed, no drain); ``--lost-s`` later a node offering the
   same resources joins; once coder runs again, ``--after`` more answers.
4. Reported: the nodes, where each application's replicas ran before and after, requests sent /
   answered / lost (no HTTP answer) / 5xx, fallbacks (answered by a later candidate) and why the
   first candidate failed, the time until coder ran again, and p50/p99 before (answered before the
   removal), during (in flight at the removal, or sent before coder ran again) and after.

``--stub`` replaces llama-server with bench/_stub_backend.py (one word every ``--token-ms``): the
harness in seconds, latencies of the path only.

    .venv/bin/python bench/ray_multinode.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _ray_cluster import (
    HEAD,
    WORKER_A,
    WORKER_B,
    add_worker,
    pinned_registry,
    remove_worker,
    start_cluster,
    stub_llama_server,
)
from _report import emit, machine, pct  # bench/ is on sys.path when a bench runs as a script

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ray_multinode.json"
PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is 17 times 23?",
    "Tell me a short story about a dragon.",
]
# Where pinned_registry asks each application to run, by node role.
EXPECTED = {"(ingress)": ["head"], "coder": ["a"], "general": ["b"], "backup": ["a", "b"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "experts.yaml")
    p.add_argument("--concurrency", type=int, default=3)
    p.add_argument("--before", type=int, default=24, help="answers before the node is removed")
    p.add_argument("--after", type=int, default=24, help="answers after the lost expert runs again")
    p.add_argument("--lost-s", type=float, default=10.0, help="seconds before a node is added back")
    p.add_argument("--max-requests", type=int, default=600, help="the load's bound, whatever happens")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--stub", action="store_true", help="stub experts instead of llama-server")
    p.add_argument("--token-ms", type=float, default=20.0, help="--stub: one word every this many ms")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p.parse_args()


@dataclass
class Load:
    """Routed requests, ``concurrency`` at a time, on an event loop of its own thread (Ray starts and
    removes nodes from the main thread only); each row: start and end (s), the HTTP status or the
    exception's name when no answer came, the answering expert, whether a later candidate answered."""

    base: str
    args: argparse.Namespace
    t0: float = field(default_factory=time.perf_counter)
    done: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread

    async def _run(self) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=300) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.args.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set() and self.sent < self.args.max_requests:
            i, self.sent = self.sent, self.sent + 1
            body = {
                "model": "coe",
                "messages": [{"role": "user", "content": f"{PROMPTS[i % 3]} ({i})"}],
                "max_tokens": self.args.max_tokens,
                "temperature": 0.0,
                "coe": {"trace": True},
            }
            row: dict[str, Any] = {"start": self.now(), "status": None, "expert": None, "fallback": False}
            try:
                resp = await client.post(self.base + "/v1/chat/completions", json=body)
                row["status"] = resp.status_code
                if resp.status_code == 200:
                    trace = resp.json().get("coe") or {}
                    row["expert"] = resp.headers.get("x-coe-expert")
                    row["fallback"] = bool(trace.get("fallback_used"))
                    row["failed"] = [_reason(a) for a in trace.get("attempts", []) if not a["ok"]]
            except httpx.HTTPError as exc:  # no HTTP answer at all: lost
                row["status"] = type(exc).__name__
            row["end"] = self.now()
            self.done.append(row)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def answered(self, since: float = 0.0) -> int:
        return sum(1 for r in list(self.done) if r["status"] == 200 and r["start"] >= since)


def _reason(attempt: dict[str, Any]) -> str:
    """A failed attempt as ``expert: why``, cut before the request-specific details."""
    error = str(attempt.get("error") or "")
    return f"{attempt['expert']}: {error.split(' (')[0].split(';')[0][:90]}"


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, period_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not after {timeout_s:g}s")
        time.sleep(period_s)


def scenario(cluster: Any, deployed: Any, roles: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The load, the removal of worker A and its replacement; the timings seen."""
    from coe.deploy import ray as coe_ray

    coder = deployed.experts["coder"].app

    def coder_runs() -> bool:
        return bool(coe_ray.replica_nodes(deployed)[coder])

    load = Load(deployed.url.removesuffix("/v1"), args)
    thread = load.start()
    out: dict[str, Any] = {}
    try:
        wait_for(lambda: load.answered() >= args.before, 600, "answers before the removal")
        out["removed_at_s"] = load.now()
        remove_worker(cluster, roles.pop("a"))
        wait_for(lambda: not coder_runs(), 120, "Serve to see coder's replica gone")
        out["coder_gone_seen_s"] = load.now() - out["removed_at_s"]
        time.sleep(max(0.0, out["removed_at_s"] + args.lost_s - load.now()))
        added_at = load.now()
        roles["a2"] = add_worker(cluster, WORKER_A, 2)
        out["node_added_after_s"] = added_at - out["removed_at_s"]
        wait_for(coder_runs, 600, "coder running again")
        out["recovered_at_s"] = load.now()
        out["coder_running_after_add_s"] = out["recovered_at_s"] - added_at
        out["coder_running_after_loss_s"] = out["recovered_at_s"] - out["removed_at_s"]
        since = out["recovered_at_s"]
        wait_for(lambda: load.answered(since) >= args.after, 600, "answers after recovery")
    finally:
        load.stop.set()
        thread.join()
    out["requests"] = load.done
    return out


def placement(deployed: Any, node_roles: dict[str, str]) -> dict[str, list[str]]:
    """Per expert (and the ingress), the roles of the nodes its RUNNING replicas are on."""
    from coe.deploy import ray as coe_ray

    by_app = coe_ray.replica_nodes(deployed)
    return {p.expert: sorted(node_roles.get(n, n[:8]) for n in by_app[p.app]) for p in deployed.deployments}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200]
    latencies = [(r["end"] - r["start"]) * 1000 for r in ok]
    experts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in ok:
        experts[r["expert"]] = experts.get(r["expert"], 0) + 1
        for why in r.get("failed", []):
            reasons[why] = reasons.get(why, 0) + 1
    return {
        "sent": len(rows),
        "answered": len(ok),
        "lost": sum(1 for r in rows if isinstance(r["status"], str)),
        "errors_5xx": sum(1 for r in rows if isinstance(r["status"], int) and r["status"] >= 500),
        "errors_4xx": sum(1 for r in rows if isinstance(r["status"], int) and 400 <= r["status"] < 500),
        "fallbacks": sum(1 for r in ok if r["fallback"]),
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "by_expert": experts,
        "failed_attempts": reasons,  # why a candidate did not answer, for the fallbacks
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from coe.config import load_config
    from coe.deploy import ray as coe_ray
    from coe.experts.process import free_port

    logging.getLogger("httpx").setLevel(logging.WARNING)
    stub_dir = tempfile.TemporaryDirectory(prefix="coe-multinode-")
    if args.stub:  # before the cluster starts: its raylets, and so the replicas, inherit it
        os.environ["COE_LLAMA_SERVER"] = str(stub_llama_server(Path(stub_dir.name), args.token_ms))
    started = time.perf_counter()
    cluster = start_cluster(HEAD)
    roles = {"a": add_worker(cluster, WORKER_A, 2), "b": add_worker(cluster, WORKER_B, 2)}
    try:
        coe_ray.connect(cluster.address)
        out: dict[str, Any] = {"cluster_start_s": round(time.perf_counter() - started, 1)}
        config = pinned_registry(load_config(args.config), free_port())
        started = time.perf_counter()
        deployed = coe_ray.deploy(config, timeout_s=600)
        out["deploy_s"] = round(time.perf_counter() - started, 1)
        node_roles = _node_roles(cluster, roles)
        out["placement_before"] = placement(deployed, node_roles)
        nodes = {n.node_id: n for n in coe_ray.cluster_nodes()}
        result = scenario(cluster, deployed, roles, args)
        alive = {n.node_id: n for n in coe_ray.cluster_nodes()}
        node_roles.update(_node_roles(cluster, roles))
        out["placement_after"] = placement(deployed, node_roles)
        out["nodes"] = [
            {
                "role": node_roles.get(i, "?"),
                "node_id": i,
                "resources": _custom(n.resources),
                "alive": i in alive,
            }
            for i, n in {**nodes, **alive}.items()
        ]
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        stub_dir.cleanup()
    out.update(report(result, out, args))
    return out


def _node_roles(cluster: Any, roles: dict[str, Any]) -> dict[str, str]:
    ids = {cluster.head_node.node_id: "head"}
    ids.update({node.node_id: role for role, node in roles.items()})
    return ids


def _custom(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items() if k.startswith("coe_") or k in ("CPU", "GPU")}


def report(result: dict[str, Any], out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows = result.pop("requests")
    removed, recovered = result["removed_at_s"], result["recovered_at_s"]
    phases = {  # "during": in flight at the removal, or sent before coder ran again
        "before": [r for r in rows if r["end"] < removed],
        "during": [r for r in rows if r["end"] >= removed and r["start"] < recovered],
        "after": [r for r in rows if r["start"] >= recovered],
    }
    total = summary(rows)
    before, after = out["placement_before"], out["placement_after"]
    expected_after = {e: sorted("a2" if r == "a" else r for r in roles) for e, roles in EXPECTED.items()}
    coder_after = [r for r in phases["after"] if r["status"] == 200 and r["expert"] == "coder"]
    return {
        "experts": "stub" if args.stub else "llama-server",
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "sent": total["sent"],
        "answered": total["answered"],
        "lost": total["lost"],
        "errors_5xx": total["errors_5xx"],
        "errors_4xx": total["errors_4xx"],
        "fallbacks": total["fallbacks"],
        "placement_ok": before == EXPECTED and after == expected_after,
        "recovered": bool(coder_after),  # the lost expert answered again, on the new node
        "timings_s": {k: round(v, 2) for k, v in result.items() if k.endswith("_s")},
        "phases": {name: summary(rs) for name, rs in phases.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    for n in result["nodes"]:
        state = "alive" if n["alive"] else "removed"
        print(f"node {n['role']:<5}{n['node_id'][:8]}  {state:<8} {n['resources']}")
    print(f"{'expert':<12}{'before':>16}{'after':>16}")
    for expert in result["placement_before"]:
        before = ",".join(result["placement_before"][expert])
        after = ",".join(result["placement_after"].get(expert, []))
        print(f"{expert:<12}{before:>16}{after:>16}")
    heads = f"{'sent':>6}{'ok':>6}{'lost':>6}{'5xx':>6}{'fallb':>7}{'p50':>10}{'p99':>10}"
    print(f"\n{'phase':<8}{heads}  by expert")
    for name, s in result["phases"].items():
        print(
            f"{name:<8}{s['sent']:>6}{s['answered']:>6}{s['lost']:>6}{s['errors_5xx']:>6}{s['fallbacks']:>7}"
            f"{s['p50_ms']:>8.0f}ms{s['p99_ms']:>8.0f}ms  {s['by_expert']}"
        )
    for name, s in result["phases"].items():
        for why, n in s["failed_attempts"].items():
            print(f"  {name}: {n} x {why}")
    t = result["timings_s"]
    print(
        f"\nexperts: {result['experts']}; worker A removed at {t['removed_at_s']}s; Serve saw coder gone "
        f"{t['coder_gone_seen_s']}s later; node added back {t['node_added_after_s']}s after the loss; coder "
        f"running again {t['coder_running_after_add_s']}s after the add ({t['coder_running_after_loss_s']}s "
        f"after the loss)"
    )
    print(
        f"sent {result['sent']}, answered {result['answered']}, lost {result['lost']}, 5xx "
        f"{result['errors_5xx']}, fallbacks {result['fallbacks']}; placement_ok {result['placement_ok']}, "
        f"recovered {result['recovered']}"
    )


def main() -> dict[str, Any]:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run(args)


if __name__ == "__main__":
    started = machine()
    emit(main(), RESULTS, "--json" in sys.argv, print_table, started)
