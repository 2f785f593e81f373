"""Process inspection for the no-orphan checks (Linux /proc, no extra dependency)."""

from __future__ import annotations

import time
from pathlib import Path


def llama_server_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            state = (entry / "stat").read_text().rsplit(") ", 1)[-1][:1]
        except OSError:
            continue
        if cmd.endswith(b"llama-server") and state != "Z":
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
