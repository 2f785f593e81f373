"""Process inspection for the no-orphan checks (Linux /proc, no extra dependency).

Every llama-server a test starts inherits the test's environment, so a marker variable set for the
session (and one per CLI call) tells our processes from any other llama-server on the machine: a
second test run or a developer's own servers cannot make these checks pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.paths import ROOT

SESSION_MARK = "COE_TEST_SESSION"
CALL_MARK = "COE_TEST_CALL"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)


def run_coe(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``coe ARGS`` in a subprocess from the repository root; ``env`` adds to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "coe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def new_call_mark() -> dict[str, str]:
    """Environment entries that tag the processes of one subprocess call."""
    return {CALL_MARK: uuid.uuid4().hex}


def llama_server_pids(mark: dict[str, str] | None = None) -> set[int]:
    """Live llama-server pids started under this test session (or under ``mark``, when given)."""
    wanted = mark or {SESSION_MARK: os.environ[SESSION_MARK]}
    needles = [f"{k}={v}".encode() for k, v in wanted.items()]
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if not cmd.endswith(b"llama-server"):
                continue
            state = (entry / "stat").read_text().rsplit(") ", 1)[-1][:1]
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if state != "Z" and all(n in env for n in needles):
            pids.add(int(entry.name))
    return pids


def wait_gone(pids: set[int], timeout_s: float = 15.0) -> set[int]:
    """Return the pids still alive after waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive &= llama_server_pids()
        time.sleep(0.1)
    return alive


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.add(int(entry.name))
    return out
