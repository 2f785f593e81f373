"""The plan of `coe deploy ray` (no Ray needed): deploy blocks to Serve options, resources, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from coe.config import load_config, parse_config
from coe.deploy.plan import ClusterNode, hosts, ingress_config, missing_resources, plan, ray_llm_config
from coe.errors import ConfigError
from tests.support.paths import ROOT

VLLM_REGISTRY = """
version: 1
experts:
  small:
    model: qwen-0.5b
    serve: {engine: llamacpp, gguf: model.gguf, parallel: 4}
    deploy: {ray: {autoscaling: {min_replicas: 1, max_replicas: 3}, num_cpus: 2}}
  big:
    model: llama-8b
    serve: {engine: vllm, model: /models/llama-8b, max_num_seqs: 32, extra_args: [--enable-prefix-caching]}
    deploy: {ray: {replicas: 2, num_gpus: 1, accelerator_type: L4}}
  frac:
    serve: {engine: vllm, model: /models/tiny, gpu_memory_utilization: 0.4}
    deploy: {ray: {num_gpus: 0.5}}
  remote:
    endpoint: http://gpu-box:8000/v1
router:
  categories:
    a: {expert: small, examples: [hello]}
deploy:
  ray: {port: 9000, host: 0.0.0.0}
"""


# ------------------------------------------------------------------------- the plan (no Ray)


def test_plan_maps_deploy_blocks_to_serve_options() -> None:
    p = plan(parse_config(VLLM_REGISTRY))
    assert set(p.experts) == {"small", "big", "frac"}  # endpoint experts stay external
    small, big = p.experts["small"], p.experts["big"]
    assert small.options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4,  # the expert's llama.cpp slots
    }
    assert small.options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert small.options["max_ongoing_requests"] == 4
    assert big.options["num_replicas"] == 2 and big.per_replica["GPU"] == 1.0
    assert big.options["ray_actor_options"]["accelerator_type"] == "L4"
    assert p.experts["frac"].per_replica["GPU"] == 0.5
    assert p.expert_url("big") == "http://127.0.0.1:9000/coe/experts/big/v1"


def test_ingress_registry_rewrites_only_managed_experts() -> None:
    config = parse_config(VLLM_REGISTRY)
    rewritten = ingress_config(config, plan(config))
    assert rewritten.experts["small"].serve is None
    assert rewritten.experts["small"].endpoint == "http://127.0.0.1:9000/coe/experts/small/v1"
    assert rewritten.experts["small"].model == "qwen-0.5b"  # the name the expert's server answers to
    assert rewritten.experts["remote"] == config.experts["remote"]
    assert rewritten.router == config.router
    # They keep what their engine serves: this GGUF's template is unknown (no tools until declared);
    # vLLM enforces tool choices itself. And their context, for the ingress's context check.
    assert rewritten.experts["small"].capabilities == ["json_schema", "logprobs"]
    assert rewritten.experts["big"].capabilities == ["json_schema", "logprobs", "tool_choice"]
    assert rewritten.experts["small"].context_window == 2048


def test_vllm_experts_map_to_ray_serve_llm_configs() -> None:
    config = parse_config(VLLM_REGISTRY)
    p = plan(config, ray_llm_available=True)
    assert p.experts["big"].backend == "ray_llm" and p.experts["small"].backend == "process"
    big = ray_llm_config("big", config.experts["big"], p.experts["big"])
    assert big["model_loading_config"] == {"model_id": "llama-8b", "model_source": "/models/llama-8b"}
    assert big["engine_kwargs"]["max_num_seqs"] == 32 and big["engine_kwargs"]["enable_prefix_caching"]
    assert big["deployment_config"]["num_replicas"] == 2 and big["accelerator_type"] == "L4"
    frac = ray_llm_config("frac", config.experts["frac"], p.experts["frac"])
    assert frac["placement_group_config"] == {"bundle_per_worker": {"GPU": 0.5}}
    assert frac["engine_kwargs"]["tensor_parallel_size"] == 1
    assert plan(config, ray_llm_available=False).experts["big"].backend == "process"


def test_missing_gpus_name_the_expert_and_the_resources() -> None:
    p = plan(parse_config(VLLM_REGISTRY))
    cpu_only = {"CPU": 16.0, "memory": 64e9}
    problems = missing_resources(p, cpu_only, [cpu_only])
    assert any(
        "expert 'big'" in m and "1 GPU" in m and "experts.big.deploy.ray.num_gpus" in m for m in problems
    )
    assert any("has 0 GPU but the deployment needs 2.5 GPU at start" in m for m in problems)
    two_gpus = {"CPU": 16.0, "GPU": 2.0, "accelerator_type:L4": 1.0}
    assert missing_resources(p, two_gpus, [two_gpus]) == [
        "the Ray cluster has 2 GPU but the deployment needs 2.5 GPU at start: "
        "'big' 2 x 1 GPU, 'frac' 1 x 0.5 GPU"
    ]


PINNED = """
version: 1
experts:
  coder:
    serve: {engine: llamacpp, gguf: model.gguf}
    deploy: {ray: {num_gpus: 1, resources: {a100: 1}}}
  general:
    serve: {engine: llamacpp, gguf: model.gguf}
    deploy: {ray: {replicas: 2, resources: {pool: 1}}}
router:
  categories:
    a: {expert: coder, examples: [hello]}
"""


def _node(name: str, **resources: float) -> ClusterNode:
    return ClusterNode(node_id=name * 8, address="10.0.0.1", resources={"CPU": 4.0, **resources})


def test_custom_resources_place_replicas_on_the_nodes_that_offer_them() -> None:
    """The recipe "this expert on the GPU node with the A100": only that node can host coder."""
    p = plan(parse_config(PINNED))
    nodes = [_node("h"), _node("g", GPU=1.0, a100=1.0, pool=1.0), _node("c", GPU=1.0, pool=1.0)]
    assert hosts(p, nodes) == {
        "coe": ["h" * 8, "g" * 8, "c" * 8],
        "coe-expert-coder": ["g" * 8],
        "coe-expert-general": ["g" * 8, "c" * 8],
    }
    total = {"CPU": 12.0, "GPU": 2.0, "a100": 1.0, "pool": 2.0}
    assert missing_resources(p, total, nodes) == []


def test_a_replica_no_node_can_host_names_the_expert_and_the_resource() -> None:
    p = plan(parse_config(PINNED))
    no_a100 = [_node("h"), _node("g", GPU=1.0, pool=2.0)]
    problems = missing_resources(p, {"CPU": 8.0, "GPU": 1.0, "pool": 2.0}, no_a100)
    assert problems == [
        "expert 'coder': one replica needs 1 a100 (experts.coder.deploy.ray.resources.a100), but no node "
        "of the Ray cluster has that much (largest: 0 a100)",
        "the Ray cluster has 0 a100 but the deployment needs 1 a100 at start: 'coder' 1 x 1 a100",
    ]
    # Each resource is somewhere, never on one node together: named with what each node lacks.
    apart = [_node("g", GPU=1.0, pool=2.0), _node("a", a100=1.0)]
    (problem,) = missing_resources(p, {"CPU": 8.0, "GPU": 1.0, "a100": 1.0, "pool": 2.0}, apart)
    assert problem.startswith("expert 'coder': one replica needs 1 CPU (experts.coder.deploy.ray.num_cpus)")
    assert (
        "no node has them all: node gggggggg (10.0.0.1) lacks a100; node aaaaaaaa (10.0.0.1) lacks GPU"
        in (problem)
    )


def test_the_multi_node_example_plans_as_its_readme_says() -> None:
    config = load_config(ROOT / "examples" / "ray" / "experts.yaml")
    p = plan(config, ray_llm_available=True)
    assert {n: e.backend for n, e in p.experts.items()} == dict.fromkeys(
        ["generalist", "coder", "math", "reasoner"], "ray_llm"
    )
    assert "summariser" not in p.experts  # an endpoint: stays external
    cpu_only = {"CPU": 64.0}
    problems = missing_resources(p, cpu_only, [cpu_only])
    assert any("needs 8.5 GPU at start" in m for m in problems)
    reasoner = ray_llm_config("reasoner", config.experts["reasoner"], p.experts["reasoner"])
    assert reasoner["engine_kwargs"]["tensor_parallel_size"] == 4


def test_deploy_block_errors_name_the_key_path() -> None:
    bad = VLLM_REGISTRY.replace("num_gpus: 0.5", "gpus: 0.5")
    with pytest.raises(
        ConfigError, match=r"experts\.frac\.deploy\.ray\.gpus: unknown key 'gpus'; expected one of"
    ):
        parse_config(bad)
    both = VLLM_REGISTRY.replace("replicas: 2, num_gpus: 1", "replicas: 2, autoscaling: {max_replicas: 2}")
    with pytest.raises(ConfigError, match="give replicas or autoscaling, not both"):
        parse_config(both)
    on_endpoint = VLLM_REGISTRY.replace(
        "endpoint: http://gpu-box:8000/v1", "endpoint: http://x/v1\n    deploy: {ray: {}}"
    )
    with pytest.raises(ConfigError, match=r"experts\.remote: deploy\.ray needs a serve: block"):
        parse_config(on_endpoint)


# ----------------------------------------------------------------- exposure of the ingress


def test_coe_deploy_ray_refuses_an_open_ingress_on_a_public_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VLLM_REGISTRY puts Serve's proxies on 0.0.0.0 and sets no keys: refused before any cluster is
    joined; the explicit flag lets it go on (here, to an address where no cluster answers)."""
    from typer.testing import CliRunner

    from coe.cli import app

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    path = tmp_path / "experts.yaml"
    path.write_text(VLLM_REGISTRY)
    args = ["deploy", "ray", "-c", str(path), "--address", "127.0.0.1:1"]
    result = CliRunner().invoke(app, args)
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "refusing to serve an API without keys on '0.0.0.0'" in message
    assert "set deploy.ray.host to 127.0.0.1" in message and "server.api_keys" in message
    assert "COE_API_KEYS" in message and "--allow-unauthenticated" in message
    assert "Ray cluster" not in message
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'coe[ray]'")
    allowed = CliRunner().invoke(app, [*args, "--allow-unauthenticated"])
    assert allowed.exit_code == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in allowed.output
    monkeypatch.setenv("COE_API_KEYS", "sk-cluster")
    keyed = CliRunner().invoke(app, args)
    assert keyed.exit_code == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in keyed.output


def test_the_library_deploy_refuses_it_too(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'coe[ray]'")
    from coe.deploy import ray as coe_ray

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    with pytest.raises(coe_ray.DeployError, match="refusing to serve an API without keys"):
        coe_ray.deploy(parse_config(VLLM_REGISTRY))  # before Ray is asked anything


def test_with_keys_the_ingress_calls_its_experts_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's proxy exposes each expert's application on the same host; the expert replicas require
    the ingress's keys, so the ingress's registry carries one for each managed expert."""
    config = parse_config(VLLM_REGISTRY)
    rewritten = ingress_config(config, plan(config), "sk-a")
    key = rewritten.experts["small"].api_key
    assert key is not None and key.get_secret_value() == "sk-a"
    assert rewritten.experts["remote"].api_key is None  # not ours: left as the registry has it
    assert ingress_config(config, plan(config)).experts["small"].api_key is None
