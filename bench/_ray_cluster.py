"""A Ray cluster of several nodes on this machine, for bench/ray_multinode.py and its test.

``ray.cluster_utils.Cluster`` starts a real head (GCS, raylet) and one raylet per worker node, each
with its own logical CPUs and custom resources: scheduling, placement by resources and node failure
are Ray's own, only the machine is shared. The nodes talk to each other on this machine's own address
(Ray resolves 127.0.0.1 to it); Serve's HTTP API, which the load goes to, is on 127.0.0.1.

``stub_llama_server`` writes a wrapper that runs bench/_stub_backend.py with llama-server's command
line; ``COE_LLAMA_SERVER`` pointing at it turns every managed llama.cpp expert into a stub (the
raylets, and so the replicas, inherit the variable from the process that starts the cluster).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OBJECT_STORE = 80 * 1024**2  # the smallest Ray accepts: nothing large goes through it
# What each node offers besides its CPUs: the head takes the ingress, each worker one pinned expert
# and one replica of the fallback expert.
HEAD = {"coe_ingress": 1.0}
WORKER_A = {"coe_node_a": 1.0, "coe_pool": 1.0}
WORKER_B = {"coe_node_b": 1.0, "coe_pool": 1.0}


def pinned_registry(config: Any, port: int) -> Any:
    """The default registry placed by custom resources: coder on worker A, general on worker B, and a
    fallback expert ``backup`` (general's model, the router's ``fallback.expert``) with one replica on
    each worker; the ingress on the head, its proxy on ``port``."""
    from coe.config import DeployConfig, ExpertDeploy, ExpertRayDeployment, IngressRayDeployment

    def placed(expert: Any, **ray: Any) -> Any:
        return expert.model_copy(update={"deploy": ExpertDeploy(ray=ExpertRayDeployment(**ray))})

    experts = {
        "coder": placed(config.experts["coder"], resources={"coe_node_a": 1}),
        "general": placed(config.experts["general"], resources={"coe_node_b": 1}),
        "backup": placed(config.experts["general"], replicas=2, resources={"coe_pool": 1}),
    }
    fallback = config.router.fallback.model_copy(update={"expert": "backup"})
    return config.model_copy(
        update={
            "experts": experts,
            "router": config.router.model_copy(update={"fallback": fallback}),
            "deploy": DeployConfig(ray=IngressRayDeployment(port=port, resources=HEAD)),
        }
    )


def stub_llama_server(directory: Path, token_ms: float) -> Path:
    """An executable that answers like llama-server (one word every ``token_ms``)."""
    path = directory / "llama-server"
    stub = HERE / "_stub_backend.py"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stub}" --token-ms {token_ms} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def start_cluster(head: dict[str, float], head_cpus: int = 1) -> Any:
    """The head node (GCS, Serve's controller and proxy) with ``head`` custom resources; this process
    joins it as the driver. Add workers with ``add_worker``."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": head_cpus,
            "resources": head,
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE,
        },
    )


def add_worker(cluster: Any, resources: dict[str, float], cpus: int) -> Any:
    """One worker node (its own raylet) offering ``cpus`` logical CPUs and ``resources``; waits until
    the cluster sees it."""
    node = cluster.add_node(num_cpus=cpus, resources=resources, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    return node


def remove_worker(cluster: Any, node: Any) -> None:
    """Kill the node's raylet and everything it runs, as a crash would (no graceful drain)."""
    cluster.remove_node(node, allow_graceful=False)
