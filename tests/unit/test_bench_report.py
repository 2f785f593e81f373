"""bench/_report.py: every benchmark describes the machine it ran on from what it measures (cores,
load, other busy processes) through one helper, never from fixed text."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import _report  # noqa: E402

BENCHES = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"


@pytest.fixture
def other_busy_process() -> Iterator[int]:
    """A process burning a core that is not this one's child (its parent shell has exited)."""
    out = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '{BURN}' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    time.sleep(0.3)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)


def test_machine_names_the_other_busy_processes_but_not_its_own(other_busy_process: int) -> None:
    ours = subprocess.Popen([sys.executable, "-c", BURN])  # a child, like the experts a bench starts
    try:
        time.sleep(0.3)
        m = _report.machine(sample_s=1.0)
    finally:
        ours.kill()
        ours.wait()
    busy = {p["pid"]: p for p in m["busy_processes"]}
    assert other_busy_process in busy and busy[other_busy_process]["cpu_pct"] >= _report.BUSY_PCT
    assert ours.pid not in busy and os.getpid() not in busy
    assert m["cpu_count"] == os.cpu_count() and m["cpus_usable"] >= 1
    assert len(m["load_avg"]) == 3 and m["memory_gb"] > 0
    line = _report.describe({"at_start": m, "at_end": m})
    assert f"{os.cpu_count()} cores" in line and f"load {m['load_avg'][0]}" in line
    assert "other busy processes: " in line and "none" not in line


def test_emit_records_the_machine_at_start_and_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _report.machine(sample_s=0.1)
    out = tmp_path / "r.json"
    _report.emit({"x": 1, "machine": {"torch_threads": 1}}, out, False, lambda r: print("table"), started)
    saved = json.loads(out.read_text())
    assert saved["machine"]["at_start"] == started and saved["machine"]["torch_threads"] == 1
    assert set(saved["machine"]["at_end"]) == set(started)
    printed = capsys.readouterr().out
    assert printed.startswith("table\nmachine: ") and "load" in printed


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_every_bench_measures_its_machine_and_states_none(bench: Path) -> None:
    tree = ast.parse(bench.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    emits = [c for c in calls if c.func.id == "emit"]  # type: ignore[attr-defined]
    assert emits and all(len(c.args) == 5 for c in emits), "emit(result, out, json, show, started)"
    assert any(c.func.id == "machine" for c in calls)  # type: ignore[attr-defined]
    docstrings = {
        id(n.body[0].value)  # type: ignore[attr-defined]
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    fixed = re.compile(r"(loaded|shared).{0,20}(machine|core)|\b(\d+|two)[- ]core|\(shared", re.I)
    texts = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]
    assert not [t for t in texts if fixed.search(t)]
