"""The record of experts that ``coe experts up`` started detached: a small JSON file per registry,
so that later ``coe ask`` / ``coe batch`` processes reuse them and ``coe experts down`` stops them.

An entry is reused only while its process lives, answers, and its expert's settings are unchanged
(the fingerprint), so an edited experts.yaml never talks to a stale server. ``DetachedExperts`` is
the registry behind ``coe experts up|down`` and the adoption of what it started."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx

from coe.config import CoEConfig, ExpertConfig
from coe.errors import ExpertError
from coe.experts.budget import MemoryBudget
from coe.experts.process import pid_alive, stop_pid
from coe.experts.statedir import state_dir
from coe.experts.supervisor import Supervisor, expert_with_url

Entry = dict[str, object]


def fingerprint(*experts: ExpertConfig) -> str:
    """The settings of the experts a process serves (several when they share it)."""
    text = "".join(e.model_dump_json(exclude={"api_key"}) for e in experts)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


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


class DetachedExperts:
    """Experts ``coe experts up`` started, as this process sees them: ``adopted`` maps each one in use
    here to its URL. Adopted experts are reused, never evicted, counted in the budget, left running."""

    def __init__(self, config: CoEConfig, supervisor: Supervisor, budget: MemoryBudget) -> None:
        self.config = config
        self.supervisor = supervisor
        self.budget = budget
        self.adopted: dict[str, str] = {}  # by process: a group's name for experts that share one

    @property
    def path(self) -> Path:
        """The record file, in the state dir: one per registry."""
        return state_dir(self.config) / "experts.json"

    def records(self) -> dict[str, Entry]:
        return read_records(self.path)

    async def adopt(self, name: str) -> str | None:
        """Reuse the expert's detached server if one is up with the expert's current settings: its URL,
        or None."""
        name = self.supervisor.groups.host(name)
        entry = self.records().get(name)
        if not entry or entry.get("fingerprint") != self._fingerprint(name):
            return None
        url = str(entry["url"])
        if entry_pid(entry) is None or not await healthy(url):
            return None
        self.adopted[name] = url
        await self.supervisor.detect(name, url.rstrip("/").removesuffix("/v1"))
        self.supervisor.mark(name, "ready")
        if self.budget.gb is not None:
            await asyncio.to_thread(self.budget.footprint, name)  # adopted experts count against the budget
        return url

    async def up(self, names: list[str] | None = None) -> dict[str, str]:
        """Start managed experts detached so they outlive this process (``coe experts up``). Under a
        memory budget, an expert that does not fit beside those already up is left cold. Returns why
        each one left cold was not started."""
        records = self.records()
        skipped: dict[str, str] = {}
        managed = names or [n for n, e in self.config.experts.items() if e.serve is not None]
        for name in self.supervisor.groups.hosts(managed):
            if expert_with_url(self.config, name).serve is None or await self.adopt(name):
                continue
            if not self.budget.fits([*self.adopted, name]):
                skipped[name] = f"not started: over serving.memory_budget_gb ({self.budget.gb:g} GB)"
                continue
            self.supervisor.mark(name, "starting")
            try:
                server = await self.supervisor.start(name, detach=True)
            except ExpertError as exc:
                self.supervisor.mark(name, "failed", exc.reason)
                raise
            records[name] = {"pid": server.pid, "url": server.url, "fingerprint": self._fingerprint(name)}
            write_records(self.path, records)
            self.adopted[name] = server.url
            self.supervisor.mark(name, "ready")
        return skipped

    def _fingerprint(self, host: str) -> str:
        return fingerprint(*(self.config.experts[n] for n in self.supervisor.groups.members(host)))

    def down(self) -> list[str]:
        """Stop what ``coe experts up`` started (``coe experts down``)."""
        stopped = []
        for name, entry in self.records().items():
            if (pid := entry_pid(entry)) is not None:
                stop_pid(pid)
                stopped.append(name)
        self.path.unlink(missing_ok=True)
        self.adopted.clear()
        return stopped
