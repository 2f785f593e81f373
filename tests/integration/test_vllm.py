"""The vLLM engine without a GPU: its command line, and its sleep/wake HTTP contract against
tests/vllm_stub.py, which imitates ``vllm serve`` (vLLM itself needs CUDA and is not run here)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import httpx
import pytest

from coe import CoE, ExpertError
from coe.config import VllmServe, load_config, parse_config
from coe.experts.vllm import build_vllm_command, vllm_server

STUB = Path(__file__).parents[1] / "support" / "vllm_stub.py"


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable named like vllm that runs the stub; its starts are logged to a file."""
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STUB}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("COE_VLLM_STUB_LOG", str(tmp_path / "starts.jsonl"))
    return exe


def registry(exe: Path, budget: float | None, extra_env: str = "") -> str:
    experts = "".join(
        f"  {name}:\n    model: {name}-model\n    memory_gb: 40\n"
        f"    serve: {{engine: vllm, model: /models/{name}, gpu_memory_utilization: 0.45, executable: {exe}"
        f"{extra_env}}}\n"
        for name in ("qwen", "llama")
    )
    serving = f"serving: {{memory_budget_gb: {budget}, eviction: lru}}\n" if budget else ""
    return (
        f"version: 1\nexperts:\n{experts}router:\n  categories:\n"
        "    a: {expert: qwen, examples: [hello]}\n" + serving
    )


def test_command_line_uses_vllm_flags() -> None:
    spec = VllmServe(
        engine="vllm", model="/models/qwen", gpu_memory_utilization=0.3, max_model_len=4096,
        max_num_seqs=8, dtype="bfloat16", extra_args=["--enforce-eager"],
    )  # fmt: skip
    cmd = build_vllm_command("/opt/venv/bin/vllm", spec, alias="qwen-0.5b", port=8123)
    assert cmd == [
        "/opt/venv/bin/vllm", "serve", "/models/qwen",
        "--host", "127.0.0.1", "--port", "8123", "--served-model-name", "qwen-0.5b",
        "--gpu-memory-utilization", "0.3", "--max-num-seqs", "8", "--enable-sleep-mode",
        "--max-model-len", "4096", "--dtype", "bfloat16", "--enforce-eager",
    ]  # fmt: skip
    assert spec.parallel == 8  # the batch runner's concurrency for this expert


def test_vllm_expert_in_yaml_is_checked_by_engine() -> None:
    text = registry(Path("/usr/bin/vllm"), None).replace(
        "gpu_memory_utilization: 0.45", "gpu_memory_util: 0.45"
    )
    with pytest.raises(Exception) as info:
        parse_config(text)
    assert (
        "experts.qwen.serve.gpu_memory_util: unknown key 'gpu_memory_util'; expected one of: engine, model,"
        in str(info.value)
    )


async def test_sleep_wake_contract(fake_vllm: Path, tmp_path: Path) -> None:
    config = parse_config(registry(fake_vllm, None))
    server = vllm_server("qwen", config.experts["qwen"].serve, config, tmp_path / "qwen.log")  # type: ignore[arg-type]
    server.spawn()
    try:
        await server.wait_ready(30)
        assert not await server.is_sleeping()
        await server.sleep()
        assert await server.is_sleeping()
        async with httpx.AsyncClient() as client:  # asleep: completions are refused, as in vLLM
            resp = await client.post(f"{server.url}/chat/completions", json={"messages": [{"content": "x"}]})
        assert resp.status_code == 503
        await server.wake()
        assert not await server.is_sleeping()
    finally:
        server.stop()
    start = json.loads((tmp_path / "starts.jsonl").read_text().splitlines()[0])
    assert start["dev_mode"] is True  # the sleep endpoints exist only with VLLM_SERVER_DEV_MODE=1
    assert "--enable-sleep-mode" in start["argv"] and "qwen-model" in start["argv"]


def test_pool_puts_vllm_experts_to_sleep_instead_of_stopping(fake_vllm: Path) -> None:
    """Budget for one: switching experts puts the other to sleep (its process stays), and using it
    again wakes it rather than starting a new process."""
    with CoE(parse_config(registry(fake_vllm, budget=50))) as coe:
        assert coe.ask("first", expert="qwen").text == "qwen-model answers: first"
        qwen_pid = coe.pool.running["qwen"]
        assert coe.ask("second", expert="llama").text == "llama-model answers: second"
        assert coe.pool.state("qwen") == "asleep" and coe.pool.state("llama") == "ready"
        assert coe.pool.running["qwen"] == qwen_pid  # asleep, not stopped
        assert coe.ask("third", expert="qwen").text == "qwen-model answers: third"
        assert coe.pool.running["qwen"] == qwen_pid and coe.pool.state("llama") == "asleep"
        stats = coe.pool.stats()
        assert stats.starts == {"qwen": 1, "llama": 1} and stats.wakes == {"qwen": 1}
        assert stats.loads == {"qwen": 2, "llama": 1} and stats.evictions == {"qwen": 1, "llama": 1}
        pids = set(coe.pool.running.values())
    assert not any(_alive(p) for p in pids)


def test_without_dev_mode_the_pool_says_why_and_stops_instead(fake_vllm: Path) -> None:
    config = parse_config(registry(fake_vllm, budget=50, extra_env=", env: {VLLM_SERVER_DEV_MODE: '0'}"))
    with CoE(config) as coe:
        coe.ask("first", expert="qwen")
        coe.ask("second", expert="llama")
        assert coe.pool.state("qwen") == "cold" and "qwen" not in coe.pool.running
        assert "VLLM_SERVER_DEV_MODE=1" in (coe.pool.error("qwen") or "")


def test_missing_vllm_names_the_fix(tmp_path: Path) -> None:
    config = parse_config(registry(tmp_path / "no-such-vllm", None))
    with CoE(config) as coe, pytest.raises(ExpertError, match=r"serve.executable .* does not exist"):
        coe.run(coe.pool.url_for("qwen"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1] != "Z"


def test_adapter_experts_share_one_vllm_process_chosen_by_model(fake_vllm: Path, tmp_path: Path) -> None:
    """vLLM multi-LoRA by its documented contract: one process, each adapter loaded under its expert's
    model name and chosen by the request's ``model``; the expert without an adapter is the base. The
    process sleeps and wakes as one, for all its experts."""
    for name in ("sql", "chat"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(
            json.dumps({"r": 8, "base_model_name_or_path": "q"})
        )
    serve = f"engine: vllm, model: /models/q, executable: {fake_vllm}"
    text = (
        "version: 1\nexperts:\n"
        f"  base: {{model: q-base, memory_gb: 40, serve: {{{serve}}}}}\n"
        f"  sql: {{model: sql-model, serve: {{{serve}, lora: sql}}}}\n"
        f"  chat: {{serve: {{{serve}, lora: chat}}}}\n"
        f"  other: {{memory_gb: 40, serve: {{engine: vllm, model: /models/o, executable: {fake_vllm}}}}}\n"
        "router:\n  categories:\n    a: {expert: sql, examples: [hello]}\n"
        "serving: {memory_budget_gb: 50, eviction: lru}\n"
    )
    (tmp_path / "experts.yaml").write_text(text)
    with CoE(load_config(tmp_path / "experts.yaml")) as coe:
        assert coe.ask("q1", expert="sql").text == f"sql-model (adapter {tmp_path / 'sql'}) answers: q1"
        assert coe.ask("q2", expert="chat").text == f"chat (adapter {tmp_path / 'chat'}) answers: q2"
        assert coe.ask("q3", expert="base").text == "q-base answers: q3"
        assert list(coe.pool.running) == ["base"]  # one process, named after the group's first expert
        coe.ask("q4", expert="other")  # the budget holds one: the whole group goes to sleep
        assert {coe.pool.state(n) for n in ("base", "sql", "chat")} == {"asleep"}
        assert coe.ask("q5", expert="chat").text.endswith("answers: q5")
        assert coe.pool.stats().wakes == {"base": 1, "sql": 1, "chat": 1}
    argv = json.loads((tmp_path / "starts.jsonl").read_text().splitlines()[0])["argv"]
    lora = argv[argv.index("--enable-lora") :]
    assert lora == [
        "--enable-lora", "--lora-modules", f"sql-model={tmp_path / 'sql'}", f"chat={tmp_path / 'chat'}",
        "--max-loras", "2", "--max-lora-rank", "8",
    ]  # fmt: skip
    assert argv[argv.index("--served-model-name") + 1] == "q-base"
