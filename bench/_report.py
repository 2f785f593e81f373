"""What every benchmark does at the end: write its JSON under bench/results/, then print either that
JSON (``--json``, for scripts) or a table (for people)."""

from __future__ import annotations

import json
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
    """The machine a bench ran on, as measured now (not fixed text)."""
    import os
    import platform

    return {
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "processor": platform.machine(),
        "python": platform.python_version(),
    }
