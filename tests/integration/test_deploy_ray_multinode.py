"""`coe deploy ray` on a Ray cluster of three nodes (a head and two workers, on this machine, with
Ray's own ``Cluster``): experts placed by their custom resources, a refused placement, and a worker
node lost under a small load with nothing lost. The experts are stubs (bench/_stub_backend.py as
llama-server) so that this stays short; bench/ray_multinode.py runs the same with llama-server, and
adds the node back. Skipped only when Ray Serve is not installed; run alone with `pytest -m ray`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench._ray_cluster import (
    HEAD,
    WORKER_A,
    WORKER_B,
    add_worker,
    pinned_registry,
    remove_worker,
    start_cluster,
    stub_llama_server,
)
from coe.config import CoEConfig, ExpertDeploy, ExpertRayDeployment
from coe.experts.process import free_port

pytestmark = pytest.mark.ray
NO_RAY = "Ray Serve is not installed: pip install 'coe[ray]'"
PROMPTS = ["Write a Python function that reverses a string.", "Tell me a short story about a dragon."]


def test_experts_follow_their_resources_and_a_lost_node_loses_no_request(
    default_config: CoEConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray", reason=NO_RAY)
    pytest.importorskip("ray.serve", reason=NO_RAY)
    from ray import serve
    from typer.testing import CliRunner

    from coe.cli import app
    from coe.deploy import ray as coe_ray

    monkeypatch.setenv("COE_LLAMA_SERVER", str(stub_llama_server(tmp_path, token_ms=20)))  # before the nodes
    cluster = start_cluster(HEAD)
    nodes = {"a": add_worker(cluster, WORKER_A, 2), "b": add_worker(cluster, WORKER_B, 2)}
    try:
        coe_ray.connect(cluster.address)
        config = pinned_registry(default_config, free_port())
        role = {cluster.head_node.node_id: "head", **{n.node_id: r for r, n in nodes.items()}}

        # --dry-run against the cluster: where each application can go, and a refusal.
        hosts = _dry_run(CliRunner(), app, config, tmp_path, cluster.address)
        by_label = {i[:8]: r for i, r in role.items()}  # a node's label starts with its id
        assert {name: sorted(by_label[h[:8]] for h in on) for name, on in hosts.items()} == {
            "coe": ["head"],
            "coe-expert-coder": ["a"],
            "coe-expert-general": ["b"],
            "coe-expert-backup": ["a", "b"],
        }
        a100 = ExpertDeploy(ray=ExpertRayDeployment(resources={"a100": 1}))
        coder = config.experts["coder"].model_copy(update={"deploy": a100})
        refused = _dry_run(
            CliRunner(), app, config.model_copy(update={"experts": {**config.experts, "coder": coder}}),
            tmp_path, cluster.address,
        )  # fmt: skip
        assert isinstance(refused, str) and "expert 'coder'" in refused and "1 a100" in refused
        assert "experts.coder.deploy.ray.resources.a100" in refused

        deployed = coe_ray.deploy(config, timeout_s=300)
        where = {
            p.expert: sorted(role[n] for n in ids)
            for p in deployed.deployments
            for ids in [coe_ray.replica_nodes(deployed)[p.app]]
        }
        assert where == {"(ingress)": ["head"], "coder": ["a"], "general": ["b"], "backup": ["a", "b"]}

        # Worker A (coder and one backup replica) is killed while requests are in flight.
        load = _Load(deployed.url)
        load.start()
        _wait(lambda: len(load.rows) >= 6)
        remove_worker(cluster, nodes.pop("a"))
        _wait(lambda: not coe_ray.replica_nodes(deployed)["coe-expert-coder"])
        noticed = time.monotonic() + 1.0  # the ingress asks Serve every 0.5 s
        _wait(lambda: sum(1 for r in load.rows if r[0] > noticed) >= 6)
        load.stop.set()
        load.join()
        assert [r[2] for r in load.rows] == [200] * len(load.rows)  # 0 lost, 0 5xx
        assert {r[3] for r in load.rows if r[1] == 0 and r[0] > noticed} == {"backup"}  # coder's fallback
        assert {r[3] for r in load.rows if r[1] == 1} == {"general"}  # its node is untouched
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _dry_run(runner: Any, app: Any, config: CoEConfig, tmp: Path, address: str) -> dict[str, Any] | str:
    """``coe deploy ray --dry-run --address``: the JSON's hosts per application, or the error text."""
    path = tmp / "placed.json"  # a registry is YAML, and JSON is YAML
    data = config.model_dump(mode="json", exclude_none=True, exclude={"base_dir"})
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["deploy", "ray", "-c", str(path), "--dry-run", "--address", address])
    if result.exit_code:
        return " ".join(result.output.split())
    out = result.stdout
    return json.loads(out[: out.rindex("}") + 1])["placement"]["hosts"]


class _Load(threading.Thread):
    """Two clients, one sending code prompts (coder), one stories (general), until ``stop``; rows of
    (start, prompt, HTTP status or the exception's name, the answering expert)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url + "/chat/completions"
        self.rows: list[tuple[float, int, int | str, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        clients = [threading.Thread(target=self._client, args=(i,)) for i in range(len(PROMPTS))]
        for c in clients:
            c.start()
        for c in clients:
            c.join()

    def _client(self, which: int) -> None:
        body = {"model": "coe", "messages": [{"role": "user", "content": PROMPTS[which]}], "max_tokens": 8}
        with httpx.Client(trust_env=False, timeout=120) as client:
            for _ in range(200):  # bounded, whatever happens
                if self.stop.is_set():
                    return
                started = time.monotonic()
                try:
                    resp = client.post(self.url, json=body)
                    self.rows.append((started, which, resp.status_code, resp.headers.get("x-coe-expert")))
                except httpx.HTTPError as exc:
                    self.rows.append((started, which, type(exc).__name__, None))


def _wait(check: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
