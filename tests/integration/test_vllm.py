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
from coe.config import VllmServe, parse_config
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
