"""End to end through real llama.cpp servers running the real small models (SmolLM2-135M-Instruct
and Gemma-3-270M), started by CoE on loopback ports and stopped by it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coe import CoE
from tests.support.paths import DEFAULT_REGISTRY, ROOT
from tests.support.procs import llama_server_pids, new_call_mark, run_coe, wait_gone
from tests.support.registries import default_registry_with
from tests.support.stub_server import stub_server

pytestmark = pytest.mark.e2e
SHORT = {"max_tokens": 48, "temperature": 0.0}


def test_code_prompt_is_answered_by_the_coder(coe_default: CoE) -> None:
    answer = coe_default.ask("Write a Python function that reverses a string", **SHORT)
    assert answer.expert == "coder"
    assert answer.model == "smollm2-135m-instruct"
    assert answer.text.strip()
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 10  # system prompt included
    decision = answer.trace.decision
    assert decision is not None and decision.category == "code" and decision.confidence > 0.45
    assert [a.expert for a in answer.trace.attempts] == ["coder"] and answer.trace.attempts[0].ok
    assert not answer.trace.fallback_used
    assert {"route", "expert:coder", "total"} <= set(answer.trace.timings_ms)
    assert answer.trace.active_params_b == 0.135


def test_story_prompt_is_answered_by_the_generalist(coe_default: CoE) -> None:
    answer = coe_default.ask("Tell me a short story about a fox", **SHORT)
    assert answer.expert == "general"
    assert answer.model == "gemma-3-270m"
    assert answer.text.strip()
    # The Gemma chat template must be applied: the prompt is more than the bare word "gemma".
    assert answer.usage.prompt_tokens > 8


def test_each_expert_runs_in_its_own_llama_server(coe_default: CoE) -> None:
    coe_default.ask("Write a Python function that adds two numbers", **SHORT)
    coe_default.ask("Tell me a joke about cats", **SHORT)
    running = coe_default.pool.running
    assert set(running) == {"coder", "general"}
    assert set(running.values()) <= llama_server_pids()


def test_pinned_expert_overrides_routing(coe_default: CoE) -> None:
    answer = coe_default.ask("Write a Python function that reverses a string", expert="general", **SHORT)
    assert answer.expert == "general"
    assert answer.trace.decision is not None and answer.trace.decision.router == "pinned"


def test_conversation_input(coe_default: CoE) -> None:
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "Write a Python function that returns my name."},
    ]
    answer = coe_default.ask(messages, **SHORT)
    assert answer.expert == "coder" and answer.text.strip()


async def test_streaming_yields_deltas_then_the_answer(default_config) -> None:  # type: ignore[no-untyped-def]
    async with CoE(default_config) as coe:
        deltas: list[str] = []
        final = None
        async for event in coe.astream("Write a Python function that squares a number", **SHORT):
            if event.type == "delta":
                deltas.append(event.text)
            else:
                final = event.answer
        assert final is not None and final.expert == "coder"
        assert len(deltas) > 1 and "".join(deltas) == final.text
        assert final.usage.completion_tokens > 0
        pids = set(coe.pool.running.values())
    assert not wait_gone(pids)


def test_concurrent_requests_are_all_answered(default_config) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async def main() -> list[str]:
        async with CoE(default_config) as coe:
            prompts = ["Write a Python function that adds numbers", "Write a haiku about snow"] * 3
            answers = await asyncio.gather(*(coe.aask(p, **SHORT) for p in prompts))
            # One process per expert even though six first requests raced to start them.
            assert len(coe.pool.running) == 2
            return [a.expert for a in answers]

    assert asyncio.run(main()) == ["coder", "general"] * 3


# -------------------------------------------------------------------------- failures, fallback


def test_dead_expert_falls_back_to_the_next_candidate(tmp_path: Path) -> None:
    path = default_registry_with(
        tmp_path,
        "  remote:\n    endpoint: http://127.0.0.1:9/v1\n    retries: 0\n",
        "    code: {expert: remote, examples: ['write a python function', 'fix this bug']}\n"
        "    chat: {expert: general, examples: ['tell me a story', 'what is the capital of Peru']}\n"
        "  fallback: {expert: coder, min_confidence: 0.3}\n",
    )
    with CoE.from_yaml(path) as coe:
        answer = coe.ask("Write a Python function that reverses a string", **SHORT)
    assert answer.trace.decision is not None and answer.trace.decision.expert == "remote"
    assert answer.expert != "remote" and answer.text.strip()
    assert answer.trace.fallback_used
    first = answer.trace.attempts[0]
    assert first.expert == "remote" and not first.ok and "cannot reach" in (first.error or "")


def test_failing_expert_500_falls_back(tmp_path: Path) -> None:
    with stub_server("500") as (url, state):
        path = default_registry_with(
            tmp_path,
            f"  broken:\n    endpoint: {url}\n    retries: 1\n",
            "    code: {expert: broken, examples: ['write a python function']}\n"
            "    chat: {expert: coder, examples: ['tell me a story']}\n"
            "  fallback: {expert: coder, min_confidence: 0.2}\n",
        )
        with CoE.from_yaml(path) as coe:
            answer = coe.ask("Write a Python function that reverses a string", **SHORT)
    assert state.calls == 2  # one retry, then the next candidate
    assert answer.expert == "coder" and answer.trace.fallback_used
    assert "HTTP 500" in (answer.trace.attempts[0].error or "")


# ------------------------------------------------------------------------- the CLI, processes


def test_cli_ask_json_and_no_process_left_behind() -> None:
    mark = new_call_mark()
    args = ("ask", "Write a Python function that reverses a string", "--json", "--max-tokens", "32")
    result = run_coe(*args, env=mark)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"answer", "expert", "category", "confidence", "trace"} <= set(data)
    assert data["expert"] == "coder" and data["category"] == "code" and data["answer"].strip()
    assert data["trace"]["decision"]["reason"]
    assert "start:coder" in data["trace"]["timings_ms"]  # it did start a server of its own...
    assert not wait_gone(llama_server_pids(mark), timeout_s=5)  # ...and stopped it on exit


def test_cli_ask_prints_answer_and_trace() -> None:
    result = run_coe("ask", "Tell me a short story about a fox", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "routing trace" in result.stdout and "answered by general" in result.stdout
    assert "reason: category 'general'" in result.stdout


def ask_in_background(*extra: str) -> tuple[subprocess.Popen[bytes], set[int]]:
    """Start a long `coe ask` and return it with the llama-server pids it started."""
    mark = new_call_mark()
    args = ["ask", "Write a long Python program", "--max-tokens", "2000", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "coe", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **mark},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not llama_server_pids(mark):
        time.sleep(0.2)
    started = llama_server_pids(mark)
    assert started, "the expert never started"
    return proc, started


def test_ctrl_c_during_ask_leaves_no_process() -> None:
    proc, started = ask_in_background("--stream")
    time.sleep(1.0)  # let generation begin
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert not wait_gone(started, timeout_s=15)


def test_sigterm_during_ask_exits_cleanly_and_stops_its_experts() -> None:
    """SIGTERM becomes SystemExit(143), so `coe ask` leaves through its finally block, which stops
    the experts (not through the kernel's parent-death signal, which would leave exit code -15)."""
    proc, started = ask_in_background("--stream")
    time.sleep(1.0)  # let generation begin
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not wait_gone(started, timeout_s=15)


def test_sigkill_of_coe_still_stops_its_experts() -> None:
    """PR_SET_PDEATHSIG: even a CoE killed with SIGKILL leaves no llama-server behind."""
    proc, started = ask_in_background()
    proc.kill()
    proc.wait(timeout=10)
    assert not wait_gone(started, timeout_s=15)


def test_experts_up_status_down(tmp_path: Path) -> None:
    config = tmp_path / "experts.yaml"
    config.write_text(DEFAULT_REGISTRY.read_text())
    up = run_coe("experts", "up", "coder", "-c", str(config))
    assert up.returncode == 0, up.stderr
    status = run_coe("experts", "status", "-c", str(config), "--json")
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert rows["coder"]["state"] == "ready" and rows["general"]["state"] == "cold"
    pid = rows["coder"]["pid"]
    try:
        # `coe ask` reuses the running expert and leaves it running.
        ask = run_coe(
            "ask",
            "Write a Python function that adds numbers",
            "-c",
            str(config),
            "--json",
            "--max-tokens",
            "16",
        )
        assert ask.returncode == 0, ask.stderr
        assert "start:coder" not in json.loads(ask.stdout)["trace"]["timings_ms"]
        assert pid in llama_server_pids()
    finally:
        down = run_coe("experts", "down", "-c", str(config))
    assert down.returncode == 0 and "coder" in down.stdout
    assert not wait_gone({pid})
