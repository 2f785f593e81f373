"""Deploy a registry on a Ray cluster with Ray Serve (``coe deploy ray``).

Applications (``deploy.ray.name`` is ``coe`` by default):

* ``coe`` at ``/``: the ingress, the ``coe serve`` app over the rewritten registry (see plan.py).
* ``coe-expert-NAME`` at ``/coe/experts/NAME``: one per managed expert, an OpenAI-compatible API
  that Ray's proxy balances over that expert's replicas. llama.cpp experts (and vLLM experts where
  Ray Serve LLM is not installed) are ``ExpertReplica`` deployments that run their server process;
  vLLM experts use Ray Serve LLM's deployment when ``ray.serve.llm`` imports.
* ``coe-group-NAME`` at ``/coe/groups/NAME``: one per adapter group (LoRA adapters of one base, named
  after its first expert), an ``ExpertReplica`` whose process loads the base and every adapter of
  the group, as on one machine; each request selects its expert's adapter (see plan.py).

Why separate applications behind the proxy rather than DeploymentHandles: the ingress's CoE then
reaches each expert over the same OpenAI HTTP path as on one machine, so retries, fallbacks before
the first token, error events after it, readiness (/readyz) and per-expert limits are the same code,
not a Ray-specific copy. The cost is one loopback hop through the proxy (see bench/ray_scale.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve import RunTarget
from ray.serve.exceptions import RayServeException

from coe.config import CoEConfig
from coe.deploy.plan import (
    ClusterNode,
    DeployError,
    DeploymentPlan,
    DeployPlan,
    ingress_config,
    ingress_settings,
    missing_resources,
    plan,
    ray_llm_available,
    ray_llm_config,
    replica_config,
)
from coe.deploy.ray_replicas import ExpertReplica, IngressReplica
from coe.server import ServerSettings

__all__ = [
    "DeployError",
    "build_app",
    "cluster_nodes",
    "connect",
    "delete",
    "deploy",
    "placement",
    "ray_llm_available",
    "replica_nodes",
]

HEALTH_CHECK_PERIOD_S = 2.0  # a dead expert process is noticed (and its replica replaced) this fast


def build_app(
    config: CoEConfig, settings: ServerSettings | None = None, deploy_plan: DeployPlan | None = None
) -> list[RunTarget]:
    """The Serve applications for ``config``: one per managed expert (one per adapter group), then the
    ingress. Pass them to ``ray.serve.run_many``; ``deploy`` does that after checking the cluster."""
    deploy_plan = deploy_plan or plan(config, ray_llm_available())
    if settings is None:
        settings = ingress_settings(config, deploy_plan)
    targets = []
    for name, p in deploy_plan.experts.items():
        if p.backend == "ray_llm":
            from ray.serve.llm import LLMConfig, build_openai_app

            app = build_openai_app(
                {"llm_configs": [LLMConfig(**ray_llm_config(name, config.experts[name], p))]}
            )
        else:
            kind = "expert" if p.group is None else "group"
            deployment = serve.deployment(ExpertReplica).options(
                name=f"{kind}-{name}", health_check_period_s=HEALTH_CHECK_PERIOD_S, **p.options
            )
            app = deployment.bind(name, replica_config(config, name, deploy_plan), settings.api_keys)
        targets.append(RunTarget(target=app, name=p.app, route_prefix=p.route_prefix))
    ingress = serve.deployment(IngressReplica).options(name="ingress", **deploy_plan.ingress.options)
    key = min(settings.api_keys) if settings.api_keys else None  # the ingress's own key to its experts
    # The experts the ingress fails over from at once when none of their replicas runs (node lost);
    # not those that may scale to zero, whose requests wait for a cold start.
    watched = {n: p.app for p in deploy_plan.experts.values() if p.min_replicas > 0 for n in p.serves}
    app = ingress.bind(ingress_config(config, deploy_plan, key), settings, watched)
    targets.append(
        RunTarget(target=app, name=deploy_plan.ingress.app, route_prefix=deploy_plan.ingress.route_prefix)
    )
    return targets


# ----------------------------------------------------------------------------- the cluster


def connect(address: str = "auto", **init_kwargs: Any) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to; ``local``: start
    one in this process). A cluster that cannot be reached is one DeployError, not a stack trace."""
    if ray.is_initialized():
        return
    if address not in ("auto", "local"):
        _probe(address.removeprefix("ray://"))
    init_kwargs.setdefault("log_to_driver", False)
    init_kwargs.setdefault("logging_level", logging.WARNING)  # no INFO lines around our own messages
    try:
        # Joining a cluster that does not answer, Ray's C++ client prints a warning per retry (for
        # about 20 s); our one message below says it all.
        with contextlib.nullcontext() if address == "local" else _stderr_silenced():
            ray.init(address=None if address == "local" else address, **init_kwargs)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeployError(
            f"cannot connect to the Ray cluster at {address}: {first} (start one with `ray start --head`, "
            "or pass --address HOST:PORT of its head node)"
        ) from None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for a while (C++ code writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """ray.init retries an unreachable GCS for a minute or more; a TCP connect answers in seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeployError(f"--address {address!r}: expected auto, local, ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise DeployError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
            "running there, and is the port open?)"
        ) from None


def cluster_nodes() -> list[ClusterNode]:
    """The live nodes of the cluster this process joined, with what each offers."""
    return [
        ClusterNode(
            node_id=n["NodeID"],
            address=n.get("NodeManagerAddress", ""),
            head="node:__internal_head__" in n["Resources"],
            resources={k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")},
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def replica_nodes(deploy_plan: DeployPlan) -> dict[str, list[str]]:
    """Where each application's replicas run now: node ids of its RUNNING replicas, one per replica."""
    from ray.serve.context import _get_global_client  # no public API names replica nodes
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    out: dict[str, list[str]] = {}
    for p in deploy_plan.deployments:
        app = details.applications.get(p.app)
        replicas = [r for d in app.deployments.values() for r in d.replicas] if app else []
        out[p.app] = sorted(r.node_id or "" for r in replicas if r.state == "RUNNING")
    return out


def placement(deploy_plan: DeployPlan) -> tuple[list[ClusterNode], list[str]]:
    """The cluster's live nodes, and what would leave replicas of ``deploy_plan`` unplaced there."""
    nodes = cluster_nodes()
    return nodes, missing_resources(deploy_plan, ray.cluster_resources(), nodes)


def check_resources(deploy_plan: DeployPlan) -> None:
    _, problems = placement(deploy_plan)
    if problems:
        raise DeployError("not enough resources in the Ray cluster:\n  " + "\n  ".join(problems))


def deploy(
    config: CoEConfig,
    *,
    settings: ServerSettings | None = None,
    timeout_s: float = 900.0,
    check: bool = True,
    allow_unauthenticated: bool = False,
) -> DeployPlan:
    """Check the cluster, start Serve's proxies, deploy every application and wait until all run.
    Without API keys the ingress is deployed on a loopback ``deploy.ray.host`` only, unless
    ``allow_unauthenticated``."""
    deploy_plan = plan(config, ray_llm_available())
    if settings is None:
        settings = ingress_settings(config, deploy_plan, allow_unauthenticated)
    else:  # the proxies bind deploy.ray.host, whatever host the given settings name
        settings = dataclasses.replace(
            settings,
            host=deploy_plan.host,
            allow_unauthenticated=settings.allow_unauthenticated or allow_unauthenticated,
        )
    if (why := settings.refusal("deploy.ray.host")) is not None:
        raise DeployError(why)
    if check:
        check_resources(deploy_plan)
    _start_serve(deploy_plan)
    targets = build_app(config, settings, deploy_plan)
    try:
        serve.run_many(targets, wait_for_applications_running=False)
    except (RayServeException, RayTaskError) as exc:  # e.g. a route prefix another application holds
        raise DeployError(f"Ray Serve refused the deployment: {_error_line(str(exc))}") from None
    wait_running(deploy_plan, timeout_s)
    return deploy_plan


def _start_serve(deploy_plan: DeployPlan) -> None:
    serve.start(
        http_options={"host": deploy_plan.host, "port": deploy_plan.port}, proxy_location=_proxy_location()
    )
    from ray.serve.context import _get_global_client  # no public getter for the running HTTP options

    running = _get_global_client().http_config
    if running.port != deploy_plan.port:
        raise DeployError(
            f"Ray Serve already runs on this cluster with its proxies on port {running.port}, not "
            f"deploy.ray.port {deploy_plan.port}: set deploy.ray.port: {running.port} or restart Serve"
        )


def _proxy_location() -> str:
    """Serve runs a proxy on every node by default, each on deploy.ray.port. Nodes that share one
    address (a test cluster on one machine) would share that port (Serve's proxies bind it with
    SO_REUSEPORT), so the kernel would hand a client's connection to any node's proxy, and losing a
    worker node would cut the connections that landed there: there, only the head runs one."""
    nodes = cluster_nodes()
    return "HeadOnly" if len(nodes) > 1 and len({n.address for n in nodes}) == 1 else "EveryNode"


def wait_running(deploy_plan: DeployPlan, timeout_s: float) -> None:
    """Wait until every application runs its planned replicas; a failed one is an error with Ray's
    own message. Replica counts matter: right after an in-place update the application still reports
    RUNNING while its old replicas serve."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications
        failed = [
            p.app for p in deploy_plan.deployments if p.app in status and status[p.app].status in _FAILED
        ]
        if failed:
            details = "; ".join(f"{n}: {_word(status[n].status)}: {_message(status[n])}" for n in failed)
            raise DeployError(f"deployment failed: {details}")
        waiting = [p.app for p in deploy_plan.deployments if not _settled(p, status.get(p.app))]
        if not waiting:
            return
        if time.monotonic() > deadline:
            states = ", ".join(
                f"{n} ({_word(status[n].status) if n in status else 'not started'})" for n in waiting
            )
            raise DeployError(f"not running after {timeout_s:g}s: {states}; see `serve status`")
        time.sleep(0.5)


_FAILED = ("DEPLOY_FAILED", "UNHEALTHY")
_BUSY = ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


def _settled(p: DeploymentPlan, app: Any) -> bool:
    if app is None or app.status != "RUNNING":
        return False
    if p.backend == "ray_llm":  # Ray Serve LLM's own deployments: its status is the word
        return True
    for d in app.deployments.values():
        running = d.replica_states.get("RUNNING", 0)
        if d.status != "HEALTHY" or any(d.replica_states.get(s) for s in _BUSY) or running < p.min_replicas:
            return False
        if p.min_replicas == p.max_replicas and running != p.min_replicas:
            return False
    return True


def _message(app: Any) -> str:
    """Ray's status messages, with a replica's traceback cut down to the error it ended in."""
    parts = []
    for message in [app.message] + [d.message for d in app.deployments.values()]:
        text = (message or "").strip()
        if "Traceback" in text:
            head, _, trace = text.partition("Traceback")
            text = f"{head.strip()} {_error_line(trace)}".strip()
        if text and text not in parts:
            parts.append(text)
    return " ".join(parts)[:2000] or "no message"


def _word(state: Any) -> str:
    """RUNNING rather than ApplicationStatus.RUNNING."""
    return str(getattr(state, "value", state))


def _error_line(text: str) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def delete(config: CoEConfig) -> list[str]:
    """Remove this registry's applications from the cluster (its expert processes stop with them)."""
    deploy_plan = plan(config)
    names = [p.app for p in deploy_plan.deployments]
    present = set(serve.status().applications)
    for name in names:
        if name in present:
            serve.delete(name)
    return [n for n in names if n in present]
