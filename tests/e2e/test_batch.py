"""``coe batch`` and ``CoE.batch``: grouping by expert under a memory budget, resuming, and faults,
with real llama-server experts (stub servers only to inject timeouts and 500s)."""

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
from coe.batch.files import BatchResult
from tests.support.files import out_ids, write_jsonl
from tests.support.paths import ROOT
from tests.support.procs import llama_server_pids, new_call_mark, wait_gone
from tests.support.registries import pool_registry, pool_registry_text
from tests.support.stub_server import stub_server

ROUTES = (
    "    code: {expert: coder, examples: ['Write a Python function that sorts a list', 'Fix my code']}\n"
    "    chat: {expert: general, examples: ['Tell me a story about a cat', 'What is the capital of Peru?']}\n"
)


# ----------------------------------------------------------------------------- files, no experts


# ------------------------------------------------------------------------------- real experts

e2e = pytest.mark.e2e  # real llama-server processes


@e2e
def test_batch_routes_first_loads_each_expert_once_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items: list[dict[str, object]] = []
    for i in range(4):  # interleaved: a FCFS run with room for one expert would swap on every item
        items.append({"id": f"code{i}", "prompt": f"Write a Python function that adds {i} to a number"})
        items.append({"id": f"chat{i}", "prompt": f"Tell me a story about cat number {i}"})
        items.append({"id": f"pin{i}", "prompt": "Say hello", "expert": "general"})
    with CoE(pool_registry(budget=1.5, routes=ROUTES)) as coe:
        report = coe.batch(items, out=out)
        assert report.loads == {"coder": 1, "general": 1}  # one load per distinct expert
        assert report.groups == {"general": 8, "coder": 4}
        assert [r.id for r in report.results] == [i["id"] for i in items] and not report.failed
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == sorted(i["id"] for i in items)
        by_id = {line["id"]: line for line in lines}
        assert by_id["code0"]["expert"] == "coder" and by_id["chat0"]["expert"] == "general"
        assert by_id["code0"]["trace"]["decision"]["router"] == "category" and by_id["code0"]["answer"]
        assert by_id["pin0"]["trace"]["decision"]["router"] == "pinned"
        # Run again with two more items: only those run, the rest are read back.
        more = [*items, {"id": "late1", "prompt": "Fix this bug in my code"}, {"id": "late2", "prompt": "Hi"}]
        again = coe.batch(more, out=out)
        assert again.resumed == len(items) and len(again.results) == len(more)
    assert sorted(out_ids(out)) == sorted(str(i["id"]) for i in more)


@e2e
def test_item_errors_and_timeouts_are_written_and_the_batch_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with stub_server("hang") as (slow_url, _), stub_server("500") as (broken_url, _):
        extra = (
            f"  slow:\n    endpoint: {slow_url}\n    timeout_s: 1\n    retries: 0\n"
            f"  broken:\n    endpoint: {broken_url}\n    retries: 0\n"
        )
        with CoE(pool_registry(budget=None, extra_experts=extra)) as coe:
            items = [{"id": n, "prompt": "hello", "expert": n} for n in ("slow", "broken", "coder", "nobody")]
            report = coe.batch(items, out=out)
    results = {r.id: r for r in report.results}
    assert results["coder"].ok and results["coder"].answer
    assert "slow: timed out after 1s" in (results["slow"].error or "")
    assert "broken: HTTP 500" in (results["broken"].error or "")
    known = "broken, coder, coder2, general, slow"
    assert results["nobody"].error == f"expert 'nobody' failed: no such expert; known: {known}"
    assert sorted(out_ids(out)) == ["broken", "coder", "nobody", "slow"]


@e2e
def test_a_crashed_expert_is_restarted_once_then_its_items_fail_with_the_reason(tmp_path: Path) -> None:
    class KillOnSchedule:
        """Kills coder's llama-server when the 2nd and the 5th results are written."""

        def __init__(self, coe: CoE) -> None:
            self.coe, self.seen, self.killed = coe, 0, []  # type: ignore[var-annotated]

        def planned(self, groups: object, resumed: int) -> None:
            pass

        def finished(self, result: BatchResult, group: str) -> None:
            self.seen += 1
            if self.seen in (2, 5) and "coder" in self.coe.pool.running:
                self.killed.append(self.coe.pool.running["coder"])
                os.kill(self.killed[-1], signal.SIGKILL)

    items = [
        {"id": i, "prompt": f"Count to {i}", "expert": "coder", "params": {"max_tokens": 24}}
        for i in range(12)
    ]
    with CoE(pool_registry(budget=None)) as coe:
        killer = KillOnSchedule(coe)
        report = coe.batch(items, out=tmp_path / "out.jsonl", observer=killer)
        restarted_once = coe.pool.supervisor.starts["coder"] == 2  # not twice
        assert len(killer.killed) == 2 and restarted_once
    assert sorted(out_ids(tmp_path / "out.jsonl"), key=int) == [str(i) for i in range(12)]
    answered = [r for r in report.results if r.ok]
    failed = [r for r in report.results if not r.ok]
    assert len(answered) >= 5 and failed
    for result in failed:
        assert "its process crashed 2 times (restarted 1 time); llama-server exited with code -9" in (
            result.error or ""
        )


@e2e
def test_sigkill_mid_batch_then_rerun_writes_every_id_exactly_once(tmp_path: Path) -> None:
    """Kill `coe batch` with SIGKILL while it runs, start it again: the job finishes, nothing is lost
    and nothing is repeated."""
    config = tmp_path / "experts.yaml"
    config.write_text(pool_registry_text(budget=1.5))
    items = [  # pinned, alternating: no router to load, a swap per item for a FCFS run
        {
            "id": f"q{i}",
            "prompt": f"Say hello {i}",
            "expert": ("coder", "general")[i % 2],
            "params": {"max_tokens": 8},
        }
        for i in range(24)
    ]
    src, out = write_jsonl(tmp_path / "in.jsonl", items), tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "coe", "batch", str(src), str(out), "-c", str(config), "--no-progress"]
    mark = new_call_mark()  # tags the llama-servers this run starts
    first = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **mark}
    )
    deadline = time.monotonic() + 240
    started: set[int] = set()
    while time.monotonic() < deadline and (
        not started or not out.exists() or len(out.read_text().splitlines()) < 4
    ):
        assert first.poll() is None, "coe batch ended before it could be killed"
        started = llama_server_pids(mark)
        time.sleep(0.1)
    assert started, "no expert was running when the batch was killed"
    first.kill()
    first.wait(timeout=10)
    assert not wait_gone(started)  # its experts died with it
    done_before = len(out.read_text().splitlines())
    assert 4 <= done_before < len(items)
    with out.open("a") as fh:
        fh.write('{"id": "q0", "exp')  # and a write cut in the middle, as a kill can leave it
    second = subprocess.run([*args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["resumed"] == done_before and summary["failed"] == 0
    assert summary["answered"] == len(items)
    ids = out_ids(out)
    assert sorted(ids) == sorted(i["id"] for i in items) and len(ids) == len(set(ids))
    assert "dropped an unfinished last line" in second.stderr


@e2e
def test_cli_reports_bad_lines_and_a_missing_file(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "hi", "expert": "coder"}, "{oops"])
    config = tmp_path / "experts.yaml"
    config.write_text(pool_registry_text(budget=None))
    args = [sys.executable, "-m", "coe", "batch", "-c", str(config), "--no-progress"]
    run = subprocess.run(
        [*args, str(src), str(tmp_path / "out.jsonl")], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 1  # a line was skipped
    assert f"{src}:2: not valid JSON" in run.stderr and "Traceback" not in run.stderr
    assert out_ids(tmp_path / "out.jsonl") == ["1"]
    missing = subprocess.run(
        [*args, str(tmp_path / "nope.jsonl"), "o.jsonl"], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 1 and "nope.jsonl: no such file" in missing.stderr
