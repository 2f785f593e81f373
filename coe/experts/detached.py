"""The record of experts that ``coe experts up`` started detached: a small JSON file per registry,
so that later ``coe ask`` / ``coe batch`` processes reuse them and ``coe experts down`` stops them.

An entry is reused only while its process lives, answers, and its expert's settings are unchanged
(the fingerprint), so an edited experts.yaml never talks to a stale server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from coe.config import ExpertConfig
from coe.experts.process import pid_alive

Entry = dict[str, object]


def fingerprint(expert: ExpertConfig) -> str:
    return hashlib.sha1(expert.model_dump_json(exclude={"api_key"}).encode()).hexdigest()[:16]


def read_records(path: Path) -> dict[str, Entry]:
    try:
        state: dict[str, dict[str, object]] = json.loads(path.read_text())
        return state
    except (OSError, ValueError):
        return {}


def write_records(path: Path, records: dict[str, Entry]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2))
    tmp.replace(path)


def entry_pid(entry: Entry | None) -> int | None:
    """The entry's pid while that process lives."""
    if not entry:
        return None
    pid = int(entry["pid"])  # type: ignore[call-overload]
    return pid if pid_alive(pid) else None


async def healthy(url: str) -> bool:
    base = url.rstrip("/").removesuffix("/v1")
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            for path in ("/health", "/v1/models"):
                resp = await client.get(base + path, timeout=2.0)
                if resp.status_code == 200:
                    return True
    except httpx.TransportError:
        return False
    return False
