"""``coe deploy ray``: the registry as Ray Serve applications on a cluster. Ray is imported inside the
command (it is the optional ``ray`` extra), so ``coe --help`` stays fast and works without it."""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import TYPE_CHECKING, Annotated

import typer

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, fail, load, note, out

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.deploy.plan import DeployPlan

deploy_app = typer.Typer(help="Deploy the registry on a cluster.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")


@deploy_app.command("ray")
def deploy_ray(
    config: ConfigOpt = DEFAULT_CONFIG,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster: auto (the one this machine joined; the default), HOST:PORT, ray://HOST:PORT, "
            "or local (start one here and serve until Ctrl-C). With --dry-run: the cluster whose nodes "
            "the plan is placed on (without it, no cluster is known and placement is not checked)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (apps, replicas, resources) as JSON and deploy nothing; with --address, "
            "also which nodes can host each application (exit 1, naming the expert and the resource, "
            "when none can).",
        ),
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Remove this registry's applications.")] = False,
    check_resources: Annotated[
        bool, typer.Option(help="Refuse to deploy when the cluster lacks the GPUs/CPUs asked for.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every application to run.")] = 900.0,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Deploy the ingress without API keys on a non-loopback deploy.ray.host (refused otherwise).",
        ),
    ] = False,
) -> None:
    """Deploy experts.yaml on Ray Serve: one ingress (router, gate, aggregator and the API of `coe serve`)
    and one deployment per managed expert (one per group of LoRA adapters of one base), with the
    replicas and resources of each expert's `deploy.ray` block. `endpoint:` and `provider:` experts
    stay where they are."""
    cfg = load(config)
    if dry_run:
        _dry_run(cfg, address)
        return
    address = address or "auto"
    if not delete:  # before any cluster is joined: the refusal is about the registry alone
        from coe.deploy.plan import ingress_settings, plan

        settings = ingress_settings(cfg, plan(cfg), allow_unauthenticated)
        if (why := settings.refusal("deploy.ray.host")) is not None:
            raise fail(why)
    try:
        from coe.deploy import ray as coe_ray
    except ImportError as exc:
        raise fail(f"Ray Serve is not installed ({exc}): pip install 'coe[ray]'") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines would bury ours
    try:
        coe_ray.connect(address, **_local_cluster(cfg) if address == "local" else {})
        if delete:
            removed = coe_ray.delete(cfg)
            out.print(f"removed: {', '.join(removed) or 'nothing (no such applications)'}")
            return
        deployed = coe_ray.deploy(
            cfg, timeout_s=timeout, check=check_resources, allow_unauthenticated=allow_unauthenticated
        )
    except coe_ray.DeployError as exc:
        raise fail(exc) from None
    _print_plan(deployed)
    if address == "local":
        out.print("serving on a local Ray cluster; Ctrl-C stops it")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            coe_ray.delete(cfg)


def _dry_run(cfg: CoEConfig, address: str | None) -> None:
    """The plan as JSON; with a cluster, its ``placement``: the live nodes and, per application, the
    nodes where one replica fits (custom resources included). Refuses (exit 1) when one fits nowhere."""
    from coe.deploy.plan import hosts, plan, ray_llm_available

    deploy_plan = plan(cfg, ray_llm_available())
    data = deploy_plan.model_dump()
    if address is None:
        data["placement"] = None
        typer.echo(json.dumps(data, indent=2))
        note("placement", "no Ray cluster is known (give --address HOST:PORT): nodes not checked")
        return
    try:
        from coe.deploy import ray as coe_ray
    except ImportError as exc:
        raise fail(f"Ray Serve is not installed ({exc}): pip install 'coe[ray]'") from None
    try:
        coe_ray.connect(address)
        nodes, problems = coe_ray.placement(deploy_plan)
    except coe_ray.DeployError as exc:
        raise fail(exc) from None
    labels = {n.node_id: n.label for n in nodes}
    data["placement"] = {
        "address": address,
        "nodes": [{**n.model_dump(), "label": n.label} for n in nodes],
        "hosts": {app: [labels[i] for i in ids] for app, ids in hosts(deploy_plan, nodes).items()},
    }
    typer.echo(json.dumps(data, indent=2))
    if problems:
        raise fail("cannot place the deployment on this Ray cluster:\n  " + "\n  ".join(problems))


def _local_cluster(cfg: CoEConfig) -> dict[str, object]:
    """A cluster on this machine only: logical CPUs enough for every replica at its maximum (each
    llama.cpp replica then runs one thread per CPU it was given), and a small object store."""
    import math
    import os

    from coe.deploy.plan import plan

    need = sum(p.max_replicas * p.per_replica.get("CPU", 0) for p in plan(cfg).deployments)
    return {
        "num_cpus": max(os.cpu_count() or 1, math.ceil(need)),
        "object_store_memory": 200 * 1024**2,
        "include_dashboard": False,
    }


def _print_plan(deployed: DeployPlan) -> None:
    from rich.table import Table

    from coe.deploy.plan import INGRESS

    table = Table("application", "experts", "route", "replicas", "per replica")
    for p in deployed.deployments:
        replicas = (
            str(p.min_replicas) if p.min_replicas == p.max_replicas else f"{p.min_replicas}-{p.max_replicas}"
        )
        res = ", ".join(f"{k} {v:g}" for k, v in p.per_replica.items() if v and k != "memory")
        experts = "" if p.expert == INGRESS else ", ".join(p.serves)
        table.add_row(p.app, experts, p.route_prefix, replicas, res)
    out.print(table)
    out.print(f"OpenAI API: {deployed.url} (model `coe`, or coe/expert/NAME, coe/category/NAME)")
