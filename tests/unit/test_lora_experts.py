"""LoRA adapters as experts, without processes: which experts share a process, what each request
sends to select its adapter, the command lines, the memory budget, the slots and `coe validate`'s
checks of the adapter files (written with the gguf package for the packaged SmolLM2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coe.cli import app
from coe.config import CoEConfig, ConfigError, load_config, parse_config
from coe.experts.budget import MemoryBudget
from coe.experts.calls import ExpertCalls
from coe.experts.footprint import GB, footprint_gb
from coe.experts.groups import ProcessGroups
from coe.experts.llamacpp import build_command
from coe.experts.pool import ExpertPool
from coe.experts.vllm import build_vllm_command
from coe.server.limits import ExpertBusy, ExpertLimiter
from coe.types import Message, Request
from tests.support.adapters import write_lora
from tests.support.registries import SMOLLM

SERVE = f"engine: llamacpp, gguf: '{SMOLLM}', ctx: 512, parallel: 2, threads: 1"


def registry(folder: Path, extra: str = "", serve: str = SERVE) -> CoEConfig:
    """A base expert, two adapter experts of it (one at half scale) and a plain expert elsewhere."""
    text = f"""\
version: 1
experts:
  base:
    serve: {{{serve}}}
  legal:
    serve: {{{serve}, lora: adapters/legal.gguf}}
  medical:
    model: med
    serve: {{{serve}, lora: adapters/medical.gguf, lora_scale: 0.5}}
  other:
    serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 1024, parallel: 2, threads: 1}}
{extra}router:
  categories:
    law: {{expert: legal, examples: [a contract]}}
    health: {{expert: medical, examples: [a fever]}}
"""
    (folder / "experts.yaml").write_text(text)
    return load_config(folder / "experts.yaml")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora")
    (folder / "adapters").mkdir()
    write_lora(folder / "adapters" / "legal.gguf", seed=1, rank=2)
    write_lora(folder / "adapters" / "medical.gguf", seed=2, rank=2)
    return folder


def test_adapters_of_one_base_share_a_process_and_the_base_with_them(adapters: Path) -> None:
    groups = ProcessGroups(registry(adapters))
    assert [g.experts for g in groups.groups()] == [("base", "legal", "medical")]
    assert {groups.host(n) for n in ("base", "legal", "medical")} == {"base"}
    assert groups.host("other") == "other"  # another ctx: another process
    assert groups.hosts(["medical", "other", "legal"]) == ["base", "other"]
    assert groups.describe("medical") == "base (adapter 1; 3 experts)" and groups.describe("other") == "own"


def test_plain_experts_on_one_model_keep_their_own_processes(tmp_path: Path) -> None:
    text = f"version: 1\nexperts:\n  a: {{serve: {{{SERVE}}}}}\n  b: {{serve: {{{SERVE}}}}}\n"
    text += "router:\n  categories:\n    x: {expert: a, examples: [hi]}\n"
    groups = ProcessGroups(parse_config(text, source=tmp_path / "experts.yaml"))
    assert groups.groups() == [] and groups.hosts(["a", "b"]) == ["a", "b"]


def test_each_request_sets_every_adapters_scale(adapters: Path) -> None:
    config = registry(adapters)
    calls = ExpertCalls(config, ExpertPool(config), lambda name: frozenset())
    request = Request(messages=[Message(role="user", content="hello")])
    assert calls.payload("legal", request)["lora"] == [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]
    assert calls.payload("medical", request)["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.5}]
    assert calls.payload("base", request)["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
    assert "lora" not in calls.payload("other", request)


def test_llama_server_loads_the_groups_adapters_in_one_flag(adapters: Path) -> None:
    config = registry(adapters)
    spec = config.experts["base"].serve
    assert spec is not None and spec.engine == "llamacpp"
    loras = [adapters / "adapters" / "legal.gguf", adapters / "adapters" / "medical.gguf"]
    cmd = build_command(
        Path("llama-server"), Path("m.gguf"), spec, alias="base", port=1, threads=1, loras=loras
    )
    # One comma-separated --lora: llama-server keeps only the last of several --lora flags.
    assert cmd.count("--lora") == 1 and cmd[cmd.index("--lora") + 1] == ",".join(map(str, loras))


def test_vllm_loads_each_adapter_under_its_experts_model_name(tmp_path: Path) -> None:
    config = parse_config(
        "version: 1\nexperts:\n"
        "  base: {model: qwen, serve: {engine: vllm, model: /m/qwen}}\n"
        "  sql: {serve: {engine: vllm, model: /m/qwen, lora: /a/sql}}\n"
        "router:\n  categories:\n    x: {expert: sql, examples: [hi]}\n",
        source=tmp_path / "experts.yaml",
    )
    spec = config.experts["base"].serve
    assert spec is not None and spec.engine == "vllm"
    cmd = build_vllm_command(
        "vllm", spec, alias=["qwen"], port=1, loras={"sql": Path("/a/sql")}, max_lora_rank=16
    )
    tail = cmd[cmd.index("--enable-lora") :]
    assert tail == [
        "--enable-lora",
        "--lora-modules",
        "sql=/a/sql",
        "--max-loras",
        "1",
        "--max-lora-rank",
        "16",
    ]
    assert ProcessGroups(config).request_fields("sql") == {}  # the request's model selects the adapter


@pytest.mark.parametrize(
    ("serve", "why"),
    [
        ("{engine: vllm, model: /m, lora: /a, lora_scale: 0.5}", "vLLM applies a LoRA adapter at scale 1.0"),
        (f"{{{SERVE}, lora_scale: 0.5}}", "lora_scale is set but lora is not"),
    ],
)
def test_a_scale_that_cannot_apply_is_refused(tmp_path: Path, serve: str, why: str) -> None:
    text = f"version: 1\nexperts:\n  a: {{serve: {serve}}}\n"
    text += "router:\n  categories:\n    x: {expert: a, examples: [hi]}\n"
    with pytest.raises(ConfigError, match=why):
        parse_config(text, source=tmp_path / "experts.yaml")


def test_a_shared_process_is_counted_once_in_the_budget(adapters: Path) -> None:
    config = registry(adapters, extra="serving: {memory_budget_gb: 1}\n")
    budget = MemoryBudget(config)
    files = sum((adapters / "adapters" / f).stat().st_size for f in ("legal.gguf", "medical.gguf"))
    process = footprint_gb("base", config) + files / GB
    assert budget.footprint("legal") == budget.footprint("base") == pytest.approx(process)
    assert budget.held_gb(["base", "legal", "medical"]) == pytest.approx(process)  # once, not three times
    budget.footprint("other")
    both = process + footprint_gb("other", config)
    assert budget.held_gb(["legal", "other", "medical"]) == pytest.approx(both)


def test_experts_of_one_process_share_its_slots() -> None:
    async def run() -> None:
        limiter = ExpertLimiter({"base": 1}, queue=0, process_of=lambda n: "base")
        async with limiter.slot("legal"):
            assert limiter.in_flight("medical") == 1
            with pytest.raises(ExpertBusy):
                async with limiter.slot("medical"):
                    pass

    asyncio.run(run())


def write_model(path: Path) -> None:
    """A GGUF file that is a model, not an adapter."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "model")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _validate(folder: Path) -> str:
    result = CliRunner().invoke(app, ["validate", str(folder / "experts.yaml")])
    return result.output


def test_validate_names_an_adapter_that_is_missing_or_no_adapter(adapters: Path, tmp_path: Path) -> None:
    (tmp_path / "adapters").mkdir()
    write_model(tmp_path / "adapters" / "legal.gguf")
    registry(tmp_path)
    output = _validate(tmp_path)
    assert "experts.legal.serve.lora" in output and "is not a LoRA adapter" in output
    assert "experts.medical.serve.lora" in output and "adapter file not found" in output


def test_validate_refuses_an_adapter_of_another_architecture(adapters: Path, tmp_path: Path) -> None:
    (tmp_path / "adapters").mkdir()
    write_lora(tmp_path / "adapters" / "legal.gguf", seed=1, rank=2, architecture="gemma3")
    write_lora(tmp_path / "adapters" / "medical.gguf", seed=2, rank=2)
    registry(tmp_path)
    output = _validate(tmp_path)
    assert "experts.legal.serve.lora" in output and "architecture 'gemma3'" in output
    assert "experts.medical" not in output


def test_validate_reads_a_vllm_adapters_base_model(tmp_path: Path) -> None:
    for name, base in (("sql", "Qwen/Qwen2.5-0.5B"), ("chat", "meta-llama/Llama-3.2-1B")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": base, "r": 8})
        )
    from coe.experts.adapters import check_adapter
    from coe.experts.vllm import vllm_max_rank

    config = parse_config(
        "version: 1\nexperts:\n"
        "  sql: {serve: {engine: vllm, model: /models/Qwen2.5-0.5B, lora: sql}}\n"
        "  chat: {serve: {engine: vllm, model: /models/Qwen2.5-0.5B, lora: chat}}\n"
        "  gone: {serve: {engine: vllm, model: /models/Qwen2.5-0.5B, lora: nowhere}}\n"
        "router:\n  categories:\n    x: {expert: sql, examples: [hi]}\n",
        source=tmp_path / "experts.yaml",
    )
    checks = {n: check_adapter(e.serve, tmp_path) for n, e in config.experts.items() if e.serve}
    assert checks["sql"] is None
    assert "is an adapter of 'meta-llama/Llama-3.2-1B'" in str(checks["chat"])
    assert "adapter folder not found" in str(checks["gone"])
    assert vllm_max_rank([tmp_path / "sql"]) == 8


def test_experts_list_shows_which_process_serves_each(adapters: Path) -> None:
    registry(adapters)
    result = CliRunner().invoke(app, ["experts", "list", "-c", str(adapters / "experts.yaml"), "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["legal"]["process"] == rows["base"]["process"].replace("base;", "adapter 0;")
    assert rows["base"]["process"] == "base (base; 3 experts)" and rows["other"]["process"] == "own"
    assert rows["medical"]["lora"] == "adapters/medical.gguf"


def ray_registry(folder: Path, port: int, deploy: str = "{num_cpus: 2, replicas: 2}") -> CoEConfig:
    """A base and three adapter experts of it (the base and tax asking for the same deploy.ray, the
    others for none) and a plain expert, on Serve's proxies at ``port``."""
    write_lora(folder / "adapters" / "tax.gguf", seed=3, rank=2)
    adapter = f"serve: {{{SERVE}, lora: adapters/%s.gguf}}"
    text = f"""\
version: 1
experts:
  base: {{serve: {{{SERVE}}}, deploy: {{ray: {{num_cpus: 2, replicas: 2}}}}}}
  legal: {{{adapter % "legal"}}}
  medical: {{model: med, {adapter % "medical"}}}
  tax: {{{adapter % "tax"}, deploy: {{ray: {deploy}}}}}
  other: {{serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 1024, parallel: 2, threads: 1}}}}
router:
  categories:
    law: {{expert: legal, examples: [a contract]}}
deploy: {{ray: {{port: {port}}}}}
"""
    (folder / "experts.yaml").write_text(text)
    return load_config(folder / "experts.yaml")


def test_on_ray_an_adapter_group_is_one_application_whose_experts_keep_their_adapters(
    adapters: Path,
) -> None:
    """The plan deploys the group as one application (one process per replica: base and adapters);
    the ingress reaches each of its experts there, and every request it sends carries that expert's
    adapter scales, as a request to the shared process does on one machine."""
    from coe.deploy.plan import ingress_config, plan, replica_config
    from tests.support.stub_server import stub_server

    with stub_server("ok") as (url, state):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        config = ray_registry(adapters, port)
        deploy_plan = plan(config)
        group = deploy_plan.experts["base"]
        assert list(deploy_plan.experts) == ["base", "other"]
        assert [d.app for d in deploy_plan.deployments] == ["coe", "coe-group-base", "coe-expert-other"]
        assert group.group == ["base", "legal", "medical", "tax"] and group.route_prefix == "/coe/groups/base"
        assert group.backend == "process" and group.options["num_replicas"] == 2  # base's deploy.ray
        assert group.per_replica["CPU"] == 2.0 and group.options["max_ongoing_requests"] == 2  # its slots
        # A replica runs the whole group in one process, threads matched to its CPUs on every expert.
        replica = replica_config(config, "base", deploy_plan)
        assert [g.experts for g in ProcessGroups(replica).groups()] == [("base", "legal", "medical", "tax")]
        assert {e.serve.threads for e in replica.experts.values() if e.serve} == {1}  # SERVE's own threads

        rewritten = ingress_config(config, deploy_plan)
        for name in group.group:
            assert rewritten.experts[name].endpoint == f"http://127.0.0.1:{port}/coe/groups/base/v1"
        assert rewritten.experts["other"].endpoint == f"http://127.0.0.1:{port}/coe/experts/other/v1"
        assert "lora" not in rewritten.experts["other"].params.extra
        calls = ExpertCalls(rewritten, ExpertPool(rewritten), lambda name: frozenset())
        request = Request(messages=[Message(role="user", content="hello")])

        async def ask_each() -> None:
            for name in ("legal", "medical", "tax", "base"):
                await calls.complete(name, request)
            await calls.aclose()

        asyncio.run(ask_each())
    assert set(state.paths) == {"/coe/groups/base/v1/chat/completions"}
    sent = [(b["model"], [a["scale"] for a in b["lora"]]) for b in state.bodies]
    assert sent == [
        ("legal", [1.0, 0.0, 0.0]),
        ("med", [0.0, 1.0, 0.0]),
        ("tax", [0.0, 0.0, 1.0]),
        ("base", [0.0] * 3),
    ]
    assert [a["id"] for a in state.bodies[0]["lora"]] == [0, 1, 2]


def test_on_ray_an_adapter_group_takes_one_deploy_block(adapters: Path) -> None:
    from coe.deploy.plan import DeployError, plan

    with pytest.raises(DeployError) as refused:
        plan(ray_registry(adapters, 8000, deploy="{num_cpus: 4}"))
    message = str(refused.value)
    assert "experts tax set another deploy.ray than base" in message
    assert "(base, legal, medical, tax)" in message and "experts.base.deploy.ray" in message


def test_on_ray_a_vllm_adapter_group_runs_vllm_serve_whose_model_names_pick_the_adapters(
    tmp_path: Path,
) -> None:
    """Ray Serve LLM loads adapters its own way: the group's replicas run `vllm serve` with every
    adapter, as on one machine, and the expert's model name (sent by the ingress) picks it."""
    from coe.deploy.plan import DeployError, ingress_config, plan

    text = (
        "version: 1\nexperts:\n"
        "  base: {model: qwen, serve: {engine: vllm, model: /m/qwen}, deploy: {ray: {num_gpus: 1}}}\n"
        "  sql: {serve: {engine: vllm, model: /m/qwen, lora: /a/sql}}\n"
        "router:\n  categories:\n    x: {expert: sql, examples: [hi]}\n"
    )
    config = parse_config(text, source=tmp_path / "experts.yaml")
    group = plan(config, ray_llm_available=True).experts["base"]
    assert (group.backend, group.group, group.per_replica["GPU"]) == ("process", ["base", "sql"], 1.0)
    sql = ingress_config(config, plan(config)).experts["sql"]
    assert sql.params.extra == {} and sql.model is None  # the payload's model: "sql", the adapter's name
    forced = parse_config(
        text.replace("num_gpus: 1", "num_gpus: 1, vllm: ray_llm"), source=tmp_path / "e.yaml"
    )
    with pytest.raises(DeployError, match=r"experts.base.deploy.ray.vllm: ray_llm cannot serve"):
        plan(forced)


def test_deploy_ray_dry_run_shows_the_group_as_one_application(adapters: Path) -> None:
    ray_registry(adapters, 8000)
    result = CliRunner().invoke(app, ["deploy", "ray", "--dry-run", "-c", str(adapters / "experts.yaml")])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert list(shown["experts"]) == ["base", "other"]
    assert shown["experts"]["base"]["app"] == "coe-group-base"
    assert shown["experts"]["base"]["group"] == ["base", "legal", "medical", "tax"]
    assert shown["experts"]["other"]["group"] is None
