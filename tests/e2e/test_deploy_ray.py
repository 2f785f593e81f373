"""`coe deploy ray` on a real local Ray cluster (CPU): the default registry's two llama.cpp experts as
Ray Serve deployments, the official openai client against the Ray ingress, a replica killed under
load, and the two deploy-time errors. One cluster for the whole module (Ray is heavy on 2 cores).

The plan itself is tested in tests/unit/test_deploy_plan.py. These are skipped, with the reason, only
when Ray Serve is not installed (`pip install 'coe[ray]'`). Run alone with `pytest -m ray`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from coe.config import CoEConfig, DeployConfig, IngressRayDeployment
from coe.deploy.plan import DeployPlan
from coe.experts.process import free_port
from tests.support.adapters import write_lora
from tests.support.paths import ROOT
from tests.support.procs import llama_server_pids, run_coe, wait_gone
from tests.support.registries import SMOLLM

pytestmark = pytest.mark.ray
SHORT = {"max_tokens": 16, "temperature": 0.0}
CODE = "Write a Python function that reverses a string"
NO_RAY = "Ray Serve is not installed: pip install 'coe[ray]'"
STORY = "Tell me a short story about a dragon who is afraid of fire."
KEY = "sk-ray-test"


# ------------------------------------------------------------------------- the plan (no Ray)


# ------------------------------------------------------------------- a real local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason=NO_RAY)
    pytest.importorskip("ray.serve", reason=NO_RAY)
    from coe.deploy import ray as coe_ray

    ray_before = _ray_pids()
    # Logical CPUs: the ingress and each expert replica ask for one; the machine has two real cores.
    coe_ray.connect("local", num_cpus=6, object_store_memory=100 * 1024 * 1024, include_dashboard=False)
    try:
        yield ray
    finally:
        from ray import serve

        ours = _replica_llama_servers()
        serve.shutdown()
        ray.shutdown()
        assert not wait_gone(ours, timeout_s=30), "llama-server left behind"
        assert not _wait_ray_gone(ray_before), "Ray processes left behind"


@pytest.fixture(scope="module")
def deployed(ray_cluster: Any, default_config: CoEConfig) -> DeployPlan:
    from coe.deploy import ray as coe_ray

    config = _on_port(default_config, free_port())
    keys = config.server.model_copy(update={"api_keys": [SecretStr(KEY)]})
    p = coe_ray.deploy(config.model_copy(update={"server": keys}), timeout_s=300)
    _wait_ready(p.url.removesuffix("/v1"))
    return p


@pytest.fixture(scope="module")
def client(deployed: DeployPlan) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployed.url, api_key=KEY, max_retries=0, timeout=180)


@pytest.mark.e2e
def test_routed_answers_through_the_ray_ingress(
    deployed: DeployPlan, client: openai.OpenAI, router: Any
) -> None:
    """Same decisions as the single-machine router (same code), answered by the experts' deployments."""
    for prompt in (CODE, STORY, "What is 17 times 23?"):
        raw = client.chat.completions.with_raw_response.create(
            model="coe", messages=[{"role": "user", "content": prompt}], **SHORT
        )
        local = router.route([_request(prompt)])[0]
        assert raw.headers["x-coe-expert"] == local.experts[0]
        assert raw.headers["x-coe-category"] == local.category
        assert abs(float(raw.headers["x-coe-confidence"]) - local.confidence) < 1e-3
        completion = raw.parse()
        assert completion.model == f"coe/expert/{local.experts[0]}"
        assert completion.choices[0].message.content.strip()
    assert [m.id for m in client.models.list()][:3] == ["coe", "coe/expert/coder", "coe/expert/general"]
    # Each expert is also its own OpenAI endpoint behind Ray's proxy, balanced over its replicas; with
    # keys on the ingress it takes the same keys, so the proxy is no side door around them.
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], **SHORT}
    url = deployed.expert_url("coder") + "/chat/completions"
    unkeyed = httpx.post(url, json=body, timeout=120)
    assert unkeyed.status_code == 401 and unkeyed.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(deployed.expert_url("coder") + "/models", timeout=30).status_code == 401
    direct = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert direct.status_code == 200 and direct.json()["choices"][0]["message"]["content"]


@pytest.mark.e2e
def test_streaming_through_the_ray_ingress(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="coe",
        messages=[{"role": "user", "content": STORY}],
        stream=True,
        stream_options={"include_usage": True},
        **SHORT,
    ) as response:
        assert response.headers["x-coe-expert"] == "general"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert {c.model for c in chunks} == {"coe/expert/general"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.e2e
def test_killed_replica_is_restarted_and_no_request_is_lost(
    ray_cluster: Any, deployed: DeployPlan, client: openai.OpenAI
) -> None:
    """A coder replica dies while a batch of coder requests is in flight: each request still gets a
    200 and an answer (retried once Ray has a replica again, or answered by the fallback expert), its
    llama-server goes with it, and Ray brings the expert back."""
    old = _replicas(ray_cluster, "coe-expert-coder")
    assert len(old) == 1
    coder_servers = _replica_llama_servers(b"smollm2")
    assert len(coder_servers) == 1

    with ThreadPoolExecutor(6) as pool:
        # Long enough answers that the replica is still generating when it is killed.
        futures = [pool.submit(_ask, client, f"{CODE} (variant {i})", 64) for i in range(6)]
        assert _wait_generating(next(iter(coder_servers))), "the batch never reached the coder replica"
        ray_cluster.kill(ray_cluster.get_actor(old[0], namespace="serve"), no_restart=True)
        results = [f.result() for f in futures]
    assert [r[0] for r in results] == [200] * 6
    assert all(text.strip() for _, _, text in results)
    assert {expert for _, expert, _ in results} <= {"coder", "general"}  # general: the fallback
    assert not wait_gone(coder_servers, timeout_s=30), "the killed replica's llama-server outlived it"

    _wait_replaced(ray_cluster, "coe-expert-coder", old)
    status, expert, text = _ask_until_answered_by(client, CODE, "coder")
    assert (status, expert) == (200, "coder") and text.strip()


@pytest.mark.e2e
def test_dead_expert_process_fails_the_health_check_and_is_replaced(
    ray_cluster: Any, deployed: DeployPlan, client: openai.OpenAI
) -> None:
    """The replica lives but its llama-server dies: requests meanwhile are answered (retry or the
    fallback), the replica's health check fails, and Ray replaces it with one that runs the expert."""
    old = _replicas(ray_cluster, "coe-expert-general")
    (server,) = _replica_llama_servers(b"gemma")
    os.kill(server, signal.SIGKILL)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: _ask(client, f"{STORY} ({i})"), range(3)))
    assert all(status == 200 and text.strip() for status, _, text in results)
    _wait_replaced(ray_cluster, "coe-expert-general", old)
    status, expert, text = _ask_until_answered_by(client, STORY, "general")
    assert (status, expert) == (200, "general") and text.strip()


@pytest.mark.e2e
def test_missing_gpus_fail_at_deploy_time(
    ray_cluster: Any, deployed: DeployPlan, default_config: CoEConfig
) -> None:
    """Through the CLI, against this cluster: one message naming the expert and the resources, exit 1,
    and nothing deployed or changed."""
    text = (ROOT / "experts.yaml").read_text() + "\ndeploy: {ray: {name: coe-gpu}}\n"
    text = text.replace(
        "      ctx: 2048\n    system:", "      ctx: 2048\n    deploy: {ray: {num_gpus: 0.5}}\n    system:", 1
    )
    registry = Path(os.environ["COE_CACHE_DIR"]) / "gpu-experts.yaml"
    registry.write_text(text)
    gcs = ray_cluster.get_runtime_context().gcs_address
    result = _coe("deploy", "ray", "-c", str(registry), "--address", gcs)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "expert 'coder'" in result.stderr and "0.5 GPU" in result.stderr and "num_gpus" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(name.startswith("coe-gpu") for name in _apps())


@pytest.mark.e2e
def test_an_expert_that_cannot_start_fails_the_deploy_with_its_reason(
    ray_cluster: Any, deployed: DeployPlan, default_config: CoEConfig
) -> None:
    """A model file missing where the replica runs (on a cluster: a node without it): the deploy
    stops with the expert's own reason, not a hang or a traceback."""
    from coe.deploy import ray as coe_ray

    coder = default_config.experts["coder"]
    broken = coder.model_copy(
        update={"serve": coder.serve.model_copy(update={"gguf": "/nonexistent/m.gguf"})}
    )  # type: ignore[union-attr]
    config = default_config.model_copy(
        update={
            "experts": {"coder": broken},
            "router": _only_to("coder", default_config),
            "deploy": DeployConfig(
                ray=IngressRayDeployment(port=deployed.port, name="coe-broken", route_prefix="/broken")
            ),
        }
    )
    try:
        with pytest.raises(coe_ray.DeployError) as failure:
            coe_ray.deploy(config, timeout_s=240)
        message = str(failure.value)
        assert "coe-broken-expert-coder: DEPLOY_FAILED" in message
        assert "model file not found: /nonexistent/m.gguf" in message and "Traceback" not in message
    finally:
        coe_ray.delete(config)


@pytest.mark.e2e
def test_an_adapter_group_is_one_application_whose_experts_answer_as_their_adapters(
    ray_cluster: Any, deployed: DeployPlan, tmp_path: Path
) -> None:
    """A base and two LoRA adapters of it: one Serve application, one replica, one llama-server
    loading both adapters; each expert pinned through the Ray ingress answers as its own adapter,
    exactly as the same registry answers on one machine (``coe serve``'s code, here the library)."""
    from coe import CoE
    from coe.config import load_config
    from coe.deploy import ray as coe_ray

    for seed in (1, 2):
        write_lora(tmp_path / f"a{seed}.gguf", seed=seed)
    serve = f"engine: llamacpp, gguf: '{SMOLLM}', ctx: 512, parallel: 2, threads: 1"
    (tmp_path / "experts.yaml").write_text(
        f"version: 1\nembedder: {{backend: onnx-int8}}\nexperts:\n  base: {{serve: {{{serve}}}}}\n"
        + "".join(f"  a{s}: {{serve: {{{serve}, lora: a{s}.gguf}}}}\n" for s in (1, 2))
        + "router:\n  categories:\n    any: {expert: a1, examples: [hi]}\n"
        + f"deploy: {{ray: {{name: coe-lora, route_prefix: /lora, port: {deployed.port}}}}}\n"
    )
    config = load_config(tmp_path / "experts.yaml")
    experts = ("base", "a1", "a2")
    with CoE(config) as local:
        alone = {e: local.ask("Name a fruit.", expert=e, **SHORT).text for e in experts}
    assert len(set(alone.values())) == 3  # each adapter changes the answer
    before = _replica_llama_servers()
    try:
        p = coe_ray.deploy(config, timeout_s=240)
        assert [d.app for d in p.deployments] == ["coe-lora", "coe-lora-group-base"]
        assert len(_replicas(ray_cluster, "coe-lora-group-base")) == 1
        (server,) = _replica_llama_servers() - before  # one process for the three experts
        assert "a1.gguf," in Path(f"/proc/{server}/cmdline").read_text()  # --lora a1.gguf,a2.gguf
        client = openai.OpenAI(base_url=p.url, api_key="unused", max_retries=0, timeout=180)
        for expert in (*experts, "a2", "base", "a1"):  # alternating: each request sets every scale
            raw = client.chat.completions.with_raw_response.create(
                model=f"coe/expert/{expert}", messages=[{"role": "user", "content": "Name a fruit."}], **SHORT
            )
            assert raw.headers["x-coe-expert"] == expert
            assert raw.parse().choices[0].message.content == alone[expert], expert
    finally:
        coe_ray.delete(config)
    assert not wait_gone({server}, timeout_s=30), "the group's llama-server outlived its application"


def test_unreachable_cluster_is_one_clear_error() -> None:
    pytest.importorskip("ray.serve", reason=NO_RAY)
    result = _coe("deploy", "ray", "-c", str(ROOT / "experts.yaml"), "--address", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in lines[0], result.stderr


# ----------------------------------------------------------------------------------- helpers


def _on_port(config: CoEConfig, port: int) -> CoEConfig:
    return config.model_copy(update={"deploy": DeployConfig(ray=IngressRayDeployment(port=port))})


def _only_to(expert: str, config: CoEConfig) -> Any:
    """The router with every category and the fallback pointing at ``expert``."""
    router = config.router
    categories = {n: c.model_copy(update={"expert": expert}) for n, c in router.categories.items()}
    fallback = router.fallback.model_copy(update={"expert": expert}) if router.fallback else None
    return router.model_copy(update={"categories": categories, "fallback": fallback})


def _ask(client: openai.OpenAI, prompt: str, max_tokens: int = 16) -> tuple[int, str, str]:
    """(HTTP status, the answering expert from x-coe-expert, the answer's text)."""
    raw = client.chat.completions.with_raw_response.create(
        model="coe", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0
    )
    return raw.status_code, raw.headers["x-coe-expert"], raw.parse().choices[0].message.content or ""


def _wait_ready(base: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while (resp := httpx.get(base + "/readyz", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, resp.text
        time.sleep(0.5)


def _request(prompt: str) -> Any:
    from coe.types import Request

    return Request.from_input(prompt)


def _replicas(ray: Any, app: str) -> list[str]:
    """Names of the live replica actors of one application (Serve names them SERVE_REPLICA::APP#...)."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in names if a["name"].startswith(f"SERVE_REPLICA::{app}#"))


def _ask_until_answered_by(
    client: openai.OpenAI, prompt: str, expert: str, within_s: float = 10.0
) -> tuple[int, str | None, str]:
    """The ingress learns that a lost expert runs again at its next check of Serve's status (every
    0.5 s, coe/deploy/ray_replicas.py LostExperts): until then its requests go to the fallback, as
    documented. Ask until ``expert`` answers, or the last answer after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        answer = _ask(client, prompt)
        if answer[1] == expert or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def _wait_replaced(ray: Any, app: str, old: list[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not ((new := _replicas(ray, app)) and not set(new) & set(old) and _apps().get(app) == "RUNNING"):
        assert time.monotonic() < deadline, f"Ray did not replace the replica of {app}"
        time.sleep(0.5)


def _apps() -> dict[str, str]:
    from ray import serve

    return {name: app.status for name, app in serve.status().applications.items()}


def _coe(*args: str) -> subprocess.CompletedProcess[str]:
    return run_coe(*args, timeout=180, env={"COLUMNS": "300", "RAY_ADDRESS": ""})


def _replica_llama_servers(model: bytes = b"") -> set[int]:
    """llama-server processes started by Ray replicas (other sessions may run their own)."""
    out = set()
    for pid in llama_server_pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].split()[1]
            parent = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent.startswith(b"ray::") and model in cmd:
            out.add(pid)
    return out


def _wait_generating(pid: int, timeout_s: float = 60) -> bool:
    """Wait until the llama-server ``pid`` is generating for some request (its /slots say so)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    port = int(args[args.index(b"--port") + 1])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
        if any(slot.get("is_processing") for slot in slots):
            return True
        time.sleep(0.05)
    return False


def _ray_pids() -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ray/core/src" in cmd or b"raylet" in cmd or b"gcs_server" in cmd or cmd.startswith(b"ray::"):
                out.add(int(entry.name))
    return out


def _wait_ray_gone(before: set[int], timeout_s: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _ray_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
