"""What every benchmark does at the end: write its JSON under bench/results/, then print either that
JSON (``--json``, for scripts) or a table (for people); and how every benchmark describes the machine
it ran on.

Why the machine is measured, never described in fixed text: numbers from a shared, loaded 2-core VM
and from an idle workstation mean different things, and a sentence written once ("measured on a
loaded, shared 2-core machine") goes on claiming it wherever the bench runs. ``machine()`` reads the
cores, the load average and the other processes busy on the CPU at the time; ``emit`` records it at
the start (when the bench passes it) and at the end of the run, and prints it under the table."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUSY_PCT = 10.0  # a process using at least this share of one core while sampled counts as busy


def emit(
    result: dict[str, Any],
    out: Path,
    as_json: bool,
    show: Callable[[dict[str, Any]], None],
    started: dict[str, Any] | None = None,
) -> None:
    """``started``: ``machine()`` taken when the bench began; the state at the end is taken here.
    A bench's own facts about the machine (e.g. torch threads) may already be in ``result["machine"]``."""
    result["machine"] = {**result.get("machine", {}), "at_start": started, "at_end": machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        show(result)
        print(f"machine: {describe(result['machine'])}")
        print(f"written to {out}")


def machine(sample_s: float = 0.5) -> dict[str, Any]:
    """This machine and what else is running on it, measured now (Linux /proc; elsewhere the load
    and the busy processes are None)."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _meminfo("MemTotal"),
        "memory_available_gb": _meminfo("MemAvailable"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "busy_processes": _busy_processes(sample_s),
    }
    return info


def describe(m: dict[str, Any]) -> str:
    """One line for a table's caption: cores, load at start and end, other busy processes."""
    end = m.get("at_end") or m
    start = m.get("at_start")
    parts = [f"{end['cpu_count']} cores ({end['cpus_usable']} usable)"]
    if end.get("cpu_model"):
        parts.append(str(end["cpu_model"]))
    if end.get("load_avg"):
        load = f"load {end['load_avg'][0]}"
        if start and start.get("load_avg"):
            load = f"load {start['load_avg'][0]} at start, {end['load_avg'][0]} at end"
        parts.append(f"{load} (1 min)")
    busy = (start or {}).get("busy_processes") or end.get("busy_processes")
    if busy is not None:
        shown = ", ".join(f"{p['name']} {p['cpu_pct']:.0f}%" for p in busy[:5])
        parts.append(f"other busy processes: {shown or 'none'}")
    return "; ".join(parts)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank, rounded to 0.1); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


# ----------------------------------------------------------------------------------- /proc


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _meminfo(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _busy_processes(sample_s: float) -> list[dict[str, Any]] | None:
    """Other processes (not this one nor its children, e.g. the experts it started) that used at
    least BUSY_PCT of a core during ``sample_s``, busiest first."""
    if not Path("/proc/self/stat").exists():
        return None
    ours = descendants(os.getpid())
    first = _cpu_ticks()
    time.sleep(sample_s)
    second = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, ticks) in second.items():
        if pid in ours or pid not in first:
            continue
        used = 100.0 * (ticks - first[pid][1]) / hz / sample_s
        if used >= BUSY_PCT:
            busy.append({"pid": pid, "name": name, "cpu_pct": round(used, 1)})
    return sorted(busy, key=lambda p: -p["cpu_pct"])


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def descendants(root: int) -> set[int]:
    """``root`` and every process below it: a bench's own children, or a gateway and its workers."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid and child not in found]
        found.update(children)
        frontier.extend(children)
    return found
