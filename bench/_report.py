"""What every benchmark does at the end: write its JSON under bench/results/, then print either that
JSON (``--json``, for scripts) or a table (for people)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path, as_json: bool, show: Callable[[dict[str, Any]], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        show(result)
        print(f"written to {out}")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank, rounded to 0.1); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def machine() -> dict[str, Any]:
    """Where the numbers come from; callers add the load average before and after their run."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    return info
