"""What ``coe deploy ray`` creates, worked out from experts.yaml alone (no Ray import, no cluster).

The ingress runs the unchanged ``coe serve`` app (router, gate, aggregator, OpenAI API) over a copy of
the registry in which every managed (``serve:``) expert has become an ``endpoint:`` expert whose URL is
that expert's own Serve application behind Ray's HTTP proxy. So routing, fallbacks, retries, limits
and headers are the single-machine code, and Ray balances each expert's traffic over its replicas.
``endpoint:`` and ``provider:`` experts are left exactly as they are.

An adapter group (LoRA adapters of one base, coe.experts.groups) is one application, not one per
expert: on one machine its experts share one engine process, and a replica is that process, so the
base is loaded once per replica whichever adapter a request wants. Each expert of the group becomes an
endpoint on that application that still selects its adapter: llama.cpp's per-request ``lora`` scales
go in the endpoint's ``params.extra`` (the registry's own way to add engine fields to a request);
vLLM's adapter is chosen by the request's ``model``, the expert's model name, as on one machine.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SecretStr

from coe.config import CoEConfig, ExpertConfig, ExpertRayDeployment, IngressRayDeployment, RayDeployment
from coe.errors import CoEError

if TYPE_CHECKING:
    from coe.server.settings import ServerSettings


def ray_llm_available() -> bool:
    """Ray Serve LLM needs ``ray[llm]`` (vLLM, pyarrow, ...); ``ray[serve]`` alone does not import it.
    Here, not in coe.deploy.ray, so ``--dry-run`` can plan without importing Ray Serve."""
    try:
        import ray.serve.llm  # noqa: F401
    except ImportError:
        return False
    return True


INGRESS = "(ingress)"
GiB = 1024**3


class DeployError(CoEError):
    """The deployment cannot go ahead: cluster unreachable, resources missing, an app failed."""


class DeploymentPlan(BaseModel):
    """One Serve deployment: its application, route and the options given to ``serve.deployment``."""

    expert: str = Field(
        description="the expert it serves, the name of the adapter group it serves (its first expert), "
        "or (ingress)"
    )
    group: list[str] | None = Field(
        None,
        description="an adapter group's deployment: every expert it answers for (one engine process "
        "loads the base and each adapter); None for an expert of its own",
    )
    app: str = Field(description="Serve application name")
    route_prefix: str
    backend: Literal["ingress", "process", "ray_llm"] = Field(
        description="process: a replica runs the expert's server (llama-server or vllm serve) and proxies "
        "to it; ray_llm: Ray Serve LLM's vLLM deployment"
    )
    min_replicas: int
    max_replicas: int
    per_replica: dict[str, float] = Field(description="Ray resources one replica takes")
    options: dict[str, Any] = Field(description="serve.deployment options")

    @property
    def serves(self) -> list[str]:
        """The experts whose requests it answers."""
        return list(self.group) if self.group is not None else [self.expert]

    @property
    def who(self) -> str:
        """How a message names it."""
        if self.expert == INGRESS:
            return "the ingress"
        if self.group is not None:
            return f"adapter group {self.expert!r} ({', '.join(self.group)})"
        return f"expert {self.expert!r}"


class DeployPlan(BaseModel):
    host: str
    port: int
    ingress: DeploymentPlan
    experts: dict[str, DeploymentPlan] = Field(
        description="managed experts only, by the name of their process: the expert's own, or an adapter "
        "group's (its first expert), whose one deployment lists its experts in group"
    )

    @property
    def deployments(self) -> list[DeploymentPlan]:
        return [self.ingress, *self.experts.values()]

    @property
    def url(self) -> str:
        """The OpenAI base URL of the ingress, as a client on the head node reaches it."""
        return f"http://{_reachable(self.host)}:{self.port}{self.ingress.route_prefix.rstrip('/')}/v1"

    def serving(self, name: str) -> DeploymentPlan:
        """The deployment that answers expert ``name``: its own, or its adapter group's."""
        found = self.experts.get(name)
        if found is None:
            found = next(p for p in self.experts.values() if p.group is not None and name in p.group)
        return found

    def expert_url(self, name: str) -> str:
        """How the ingress reaches an expert: the Serve proxy of its own node (Ray runs one per node
        that holds replicas), which balances over that expert's replicas wherever they run."""
        return f"http://{_reachable(self.host)}:{self.port}{self.serving(name).route_prefix}/v1"


def plan(config: CoEConfig, ray_llm_available: bool = False) -> DeployPlan:
    from coe.experts.groups import ProcessGroups

    groups = ProcessGroups(config)
    top = config.deploy.ray or IngressRayDeployment()
    ingress = DeploymentPlan(
        expert=INGRESS,
        app=top.name,
        route_prefix=top.route_prefix,
        backend="ingress",
        **_scaling(top, slots=None, default_gpus=0.0, default_cpus=1.0),
    )
    # The ingress waits on experts most of the time: Ray's default of 5 requests per replica would
    # queue requests that the CoE's own per-expert limits are there to handle.
    ingress.options.setdefault("max_ongoing_requests", top.max_ongoing_requests or 256)
    experts = {}
    for name in groups.hosts(n for n, e in config.experts.items() if e.serve is not None):
        if (group := groups.group(name)) is not None:
            experts[name] = _group_plan(top.name, config, group.experts)
        else:
            experts[name] = _expert_plan(top.name, name, config.experts[name], ray_llm_available)
    return DeployPlan(host=top.host, port=top.port, ingress=ingress, experts=experts)


def _group_plan(app: str, config: CoEConfig, members: tuple[str, ...]) -> DeploymentPlan:
    """One application for the experts of an adapter group, as its first expert's ``deploy.ray`` asks:
    a replica is one engine process, so the group has one set of replicas and resources, and a member
    asking for others is refused rather than one of the two blocks silently ignored."""
    first = members[0]
    own = _ray_block(config.experts[first])
    differ = [n for n in members[1:] if (b := _ray_block(config.experts[n])) is not None and b != own]
    if differ:
        raise DeployError(
            f"experts {', '.join(differ)} set another deploy.ray than {first}, whose LoRA adapter group "
            f"({', '.join(members)}) is one Ray Serve application: it is deployed as "
            f"experts.{first}.deploy.ray says; give the other experts of the group no deploy.ray, or the same"
        )
    spec = config.experts[first].serve
    if own is not None and own.vllm == "ray_llm" and spec is not None and spec.engine == "vllm":
        raise DeployError(
            f"experts.{first}.deploy.ray.vllm: ray_llm cannot serve the adapter group "
            f"({', '.join(members)}); use auto or process: a replica then runs `vllm serve` with every "
            "adapter of the group"
        )
    p = _expert_plan(app, first, config.experts[first], ray_llm_available=False)
    return p.model_copy(
        update={
            "app": f"{app}-group-{first}",
            "route_prefix": f"/{app}/groups/{first}",
            "group": list(members),
        }
    )


def _ray_block(expert: ExpertConfig) -> ExpertRayDeployment | None:
    return expert.deploy.ray if expert.deploy else None


def _expert_plan(app: str, name: str, expert: ExpertConfig, ray_llm_available: bool) -> DeploymentPlan:
    spec = expert.serve
    assert spec is not None
    deploy = _ray_block(expert) or ExpertRayDeployment()
    vllm = spec.engine == "vllm"
    backend: Literal["process", "ray_llm"] = "process"
    if vllm and (deploy.vllm == "ray_llm" or (deploy.vllm == "auto" and ray_llm_available)):
        backend = "ray_llm"
    threads = getattr(spec, "threads", None)
    return DeploymentPlan(
        expert=name,
        app=f"{app}-expert-{name}",
        route_prefix=f"/{app}/experts/{name}",
        backend=backend,
        **_scaling(
            deploy,
            slots=spec.parallel,
            default_gpus=1.0 if vllm else 0.0,
            default_cpus=float(threads) if threads else 1.0,
        ),
    )


def _scaling(
    deploy: RayDeployment, *, slots: int | None, default_gpus: float, default_cpus: float
) -> dict[str, Any]:
    per_replica: dict[str, float] = {
        "CPU": default_cpus if deploy.num_cpus is None else deploy.num_cpus,
        "GPU": default_gpus if deploy.num_gpus is None else deploy.num_gpus,
    }
    if deploy.memory_gb:
        per_replica["memory"] = deploy.memory_gb * GiB
    if deploy.accelerator_type:
        per_replica[f"accelerator_type:{deploy.accelerator_type}"] = 0.001  # how Ray expresses it
    per_replica.update(deploy.resources)
    actor: dict[str, Any] = {"num_cpus": per_replica["CPU"], "num_gpus": per_replica["GPU"]}
    if deploy.memory_gb:
        actor["memory"] = int(deploy.memory_gb * GiB)
    if deploy.accelerator_type:
        actor["accelerator_type"] = deploy.accelerator_type
    if deploy.resources:
        actor["resources"] = dict(deploy.resources)
    options: dict[str, Any] = {"ray_actor_options": actor}
    if deploy.max_ongoing_requests or slots:
        options["max_ongoing_requests"] = deploy.max_ongoing_requests or slots
    if deploy.autoscaling is not None:
        auto = deploy.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests or slots or 2,
        }
        lo, hi = auto.min_replicas, auto.max_replicas
    else:
        lo = hi = deploy.replicas or 1
        options["num_replicas"] = lo
    return {"min_replicas": lo, "max_replicas": hi, "per_replica": per_replica, "options": options}


def ingress_config(config: CoEConfig, deploy_plan: DeployPlan, api_key: str | None = None) -> CoEConfig:
    """The registry the ingress runs: managed experts rewritten as endpoints on their deployments,
    called with ``api_key`` (one of the server's keys, which the expert deployments then require).
    They keep what their engine serves and their context: an endpoint without ``capabilities`` would
    be assumed to serve everything (and a llama.cpp expert would be sent forced tool choices it
    ignores). An adapter expert keeps its adapter: the fields that select it on one machine
    (llama.cpp's ``lora`` scales) go in its ``params.extra``, so every request to it carries them."""
    from coe.capabilities import context_window, expert_capabilities
    from coe.experts.groups import ProcessGroups

    groups = ProcessGroups(config)
    experts = dict(config.experts)
    key = SecretStr(api_key) if api_key else None
    for name in (n for p in deploy_plan.experts.values() for n in p.serves):
        expert = config.experts[name]
        caps, _ = expert_capabilities(expert, None)
        extra = {**expert.params.extra, **groups.request_fields(name)}
        experts[name] = expert.model_copy(
            update={
                "serve": None,
                "deploy": None,
                "endpoint": deploy_plan.expert_url(name),
                "api_key": key,
                "capabilities": sorted(caps),
                "context_window": context_window(expert, None),
                "params": expert.params.model_copy(update={"extra": extra}),
            }
        )
    return config.model_copy(update={"experts": experts})


def replica_config(config: CoEConfig, name: str, deploy_plan: DeployPlan) -> CoEConfig:
    """The registry one replica runs: its expert alone (or every expert of its adapter group, which
    must keep identical serve blocks to stay one process), with llama.cpp threads matched to the CPUs
    Ray gives the replica (on one machine the pool splits the cores among all experts), and no memory
    budget (Ray places replicas by the resources they ask for)."""
    p = deploy_plan.experts[name]
    experts = {}
    for member in p.serves:
        expert = config.experts[member]
        spec = expert.serve
        if spec is not None and spec.engine == "llamacpp" and spec.threads is None:
            spec = spec.model_copy(update={"threads": max(1, math.floor(p.per_replica["CPU"]))})
        experts[member] = expert.model_copy(update={"serve": spec})
    serving = config.serving.model_copy(update={"memory_budget_gb": None})
    return config.model_copy(update={"experts": experts, "serving": serving})


def ingress_settings(
    config: CoEConfig, deploy_plan: DeployPlan, allow_unauthenticated: bool = False
) -> ServerSettings:
    """The registry's ``server:`` block, on the address of Serve's proxies (``deploy.ray.host``); the
    per-expert concurrency limit, unless set, grows with the replicas (the single-machine default is
    one llama.cpp server's slots)."""
    concurrency = config.server.max_concurrency or max(8, expert_capacity(deploy_plan))
    from coe.server.settings import ServerSettings  # FastAPI comes with it: not for --dry-run

    return ServerSettings.from_config(
        config.server,
        max_concurrency=concurrency,
        host=deploy_plan.host,
        allow_unauthenticated=allow_unauthenticated,
    )


def expert_capacity(deploy_plan: DeployPlan) -> int:
    """The most requests the experts' replicas take at once, for the ingress's per-expert limit."""
    most = 0
    for p in deploy_plan.experts.values():
        most = max(most, p.max_replicas * int(p.options.get("max_ongoing_requests", 1)))
    return most


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# ------------------------------------------------------------------------------ resource check


class ClusterNode(BaseModel):
    """One live node of a Ray cluster as placement sees it: what it offers, in Ray's resource names
    (``CPU``, ``GPU``, ``memory``, ``accelerator_type:A100``, and the custom resources that
    ``ray start --resources`` gave it)."""

    node_id: str
    address: str
    head: bool = False
    resources: dict[str, float]

    @property
    def label(self) -> str:
        """Short enough for a table, distinct on a one-machine cluster where every node has one address."""
        if not self.node_id:
            return "?"
        return f"{self.node_id[:8]} ({self.address}{', head' if self.head else ''})"

    def lacks(self, per_replica: dict[str, float]) -> list[str]:
        """The resources this node has too little of for one replica (ignoring what others use now)."""
        return [r for r, need in per_replica.items() if need > 0 and need > self.resources.get(r, 0.0) + 1e-9]


def hosts(deploy_plan: DeployPlan, nodes: list[ClusterNode]) -> dict[str, list[str]]:
    """For each application, the nodes where one of its replicas fits (every resource it asks for,
    custom ones included); Ray places replicas only there."""
    return {p.app: [n.node_id for n in nodes if not n.lacks(p.per_replica)] for p in deploy_plan.deployments}


def missing_resources(
    deploy_plan: DeployPlan, total: dict[str, float], nodes: list[dict[str, float]] | list[ClusterNode]
) -> list[str]:
    """Problems that would leave replicas pending forever, each naming the deployment and resources.

    Ray itself would only log that a replica cannot be scheduled and keep waiting; this catches it
    before anything is deployed: a replica that no single node can host (a resource larger than every
    node's, or a custom resource no node offers, or resources that are each somewhere but never on
    one node together), or more at start (min replicas) than the whole cluster has."""
    cluster = [
        n if isinstance(n, ClusterNode) else ClusterNode(node_id="", address="", resources=n) for n in nodes
    ]
    problems = []
    for p in deploy_plan.deployments:
        if any(not n.lacks(p.per_replica) for n in cluster):
            continue
        problems.extend(_unplaceable(p, cluster))
    for res in sorted({r for p in deploy_plan.deployments for r in p.per_replica}):
        parts = [
            (p, p.min_replicas * p.per_replica[res])
            for p in deploy_plan.deployments
            if p.per_replica.get(res, 0) > 0 and p.min_replicas > 0
        ]
        need = sum(n for _, n in parts)
        have = total.get(res, 0.0)
        if need > have + 1e-9:
            detail = ", ".join(
                f"{'the ingress' if p.expert == INGRESS else repr(p.expert)} "
                f"{p.min_replicas} x {_amount(res, p.per_replica[res])}"
                for p, _ in parts
            )
            problems.append(
                f"the Ray cluster has {_amount(res, have)} but the deployment needs {_amount(res, need)} "
                f"at start: {detail}"
            )
    return problems


def _unplaceable(p: DeploymentPlan, nodes: list[ClusterNode]) -> list[str]:
    """Why no node can host one replica of ``p``: the resources no node has enough of, else the ones
    that never come together on one node."""
    who = p.who
    problems = []
    for res, need in p.per_replica.items():
        largest = max((n.resources.get(res, 0.0) for n in nodes), default=0.0)
        if need > 0 and need > largest + 1e-9:
            problems.append(
                f"{who}: one replica needs {_amount(res, need)} ({_key(p.expert, res)}), but no node of "
                f"the Ray cluster has that much (largest: {_amount(res, largest)})"
            )
    if problems:
        return problems
    wanted = ", ".join(f"{_amount(r, v)} ({_key(p.expert, r)})" for r, v in p.per_replica.items() if v > 0)
    short = "; ".join(f"node {n.label} lacks {', '.join(n.lacks(p.per_replica))}" for n in nodes)
    return [f"{who}: one replica needs {wanted} on one node, but no node has them all: {short}"]


def _amount(res: str, value: float) -> str:
    if res in ("memory", "object_store_memory"):
        return f"{value / GiB:.1f} GiB memory"
    return f"{value:g} {res}"


def _key(expert: str, res: str) -> str:
    """The experts.yaml key that asked for it."""
    keys = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_gb"}
    key = "accelerator_type" if res.startswith("accelerator_type:") else keys.get(res, f"resources.{res}")
    return f"deploy.ray.{key}" if expert == INGRESS else f"experts.{expert}.deploy.ray.{key}"


# ------------------------------------------------------------------------- Ray Serve LLM (vLLM)


def ray_llm_config(name: str, expert: ExpertConfig, p: DeploymentPlan) -> dict[str, Any]:
    """The ``ray.serve.llm.LLMConfig`` (as a dict) for a vLLM expert: same model and engine settings
    as ``vllm serve`` gets on one machine, GPUs per replica as tensor parallelism (a whole number) or
    a shared fraction of one GPU (below 1)."""
    spec = expert.serve
    assert spec is not None and spec.engine == "vllm"
    gpus = p.per_replica["GPU"]
    if gpus > 1 and gpus != int(gpus):
        raise DeployError(
            f"expert {name!r}: experts.{name}.deploy.ray.num_gpus is {gpus:g}; a vLLM replica takes a "
            "fraction of one GPU or a whole number of GPUs (its tensor-parallel size)"
        )
    tp = max(1, int(gpus))
    engine: dict[str, Any] = {
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "max_num_seqs": spec.max_num_seqs,
        "tensor_parallel_size": tp,
    }
    if spec.max_model_len:
        engine["max_model_len"] = spec.max_model_len
    if spec.dtype:
        engine["dtype"] = spec.dtype
    engine.update(_cli_kwargs(name, spec.extra_args))
    wanted = ("num_replicas", "autoscaling_config", "max_ongoing_requests")
    out: dict[str, Any] = {
        "model_loading_config": {"model_id": expert.model or name, "model_source": spec.model},
        "engine_kwargs": engine,
        "deployment_config": {k: v for k, v in p.options.items() if k in wanted},
        "placement_group_config": {"bundle_per_worker": {"GPU": gpus / tp if gpus else 0}},
    }
    if accel := p.options["ray_actor_options"].get("accelerator_type"):
        out["accelerator_type"] = accel
    if spec.env:
        out["runtime_env"] = {"env_vars": dict(spec.env)}
    return out


def _cli_kwargs(name: str, args: list[str]) -> dict[str, Any]:
    """``vllm serve`` flags as engine keyword arguments: ``--kv-cache-dtype fp8`` -> kv_cache_dtype,
    a flag with no value -> True."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise DeployError(f"expert {name!r}: serve.extra_args: cannot pass {arg!r} to Ray Serve LLM")
        key, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        out[key.replace("-", "_")] = value if (eq or value) else True
        i += 1
    return out
