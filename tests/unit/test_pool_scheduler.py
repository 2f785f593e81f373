"""The pool's scheduling and crash policy with pretend processes: what is evicted under the budget,
that a leased expert never is, and the restart limit. tests/e2e/test_pool.py runs the same rules
with real llama-server processes; these run in a second and pin the parts to each other."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from coe.config import CoEConfig
from coe.errors import ExpertError
from coe.experts.detect import Detected
from coe.experts.pool import ExpertPool
from coe.experts.process import ServerProcess
from tests.support.registries import pool_registry


class PretendServer(ServerProcess):
    """Starts, answers and stops at once; ``crash()`` makes it die on its own."""

    up = False

    def spawn(self, detach: bool = False) -> None:
        self.up = True

    async def wait_ready(self, timeout_s: float) -> None:
        return None

    def alive(self) -> bool:
        return self.up

    def stop(self, timeout_s: float = 10.0) -> None:
        self.up = False

    @property
    def pid(self) -> int | None:
        return 100_000 + self.port

    def crash(self) -> None:
        self.up = False


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[PretendServer]]:
    """Every server the pool starts, in order."""
    started: list[PretendServer] = []
    ports = itertools.count(20_000)

    def prepare(name: str, config: CoEConfig, log: Path) -> PretendServer:
        started.append(PretendServer(name, ["pretend"], next(ports), log))
        return started[-1]

    async def nothing_detected(engine: str, root: str) -> Detected | None:
        return None

    monkeypatch.setattr("coe.experts.supervisor.prepare_server", prepare)
    monkeypatch.setattr("coe.experts.supervisor.detect", nothing_detected)
    yield started


async def test_under_a_budget_for_one_the_leased_expert_stays_and_an_idle_one_is_evicted(
    servers: list[PretendServer],
) -> None:
    pool = ExpertPool(pool_registry(budget=1.5, admission_window_s=0))
    assert await pool.scheduler.warm() == ["coder"]  # as many as fit together, in order
    async with pool.lease("coder") as url:
        assert url == servers[0].url
        wanting = asyncio.create_task(pool.url_for("general"))
        await asyncio.sleep(0.3)
        assert not wanting.done() and pool.running == {"coder": servers[0].pid}
    assert await asyncio.wait_for(wanting, 5) == servers[1].url
    assert pool.state("coder") == "cold" and pool.state("general") == "ready" and not servers[0].up
    stats = pool.stats()
    assert stats.loads == {"coder": 1, "general": 1} and stats.evictions == {"coder": 1}
    assert stats.resident_gb == 1.0 and stats.budget_gb == 1.5


async def test_an_expert_larger_than_the_budget_fails_naming_both(servers: list[PretendServer]) -> None:
    pool = ExpertPool(pool_registry(budget=0.5))
    with pytest.raises(ExpertError, match=r"needs 1.00 GB, more than serving.memory_budget_gb \(0.5 GB\)"):
        await pool.url_for("coder")
    assert servers == [] and pool.state("coder") == "cold"  # nothing was started


async def test_a_crash_past_the_restart_limit_fails_with_its_reason_and_starts_nothing(
    servers: list[PretendServer],
) -> None:
    pool = ExpertPool(pool_registry(budget=None))
    with pool.supervisor.restart_limit(1):
        for _ in range(2):
            await pool.url_for("coder")
            servers[-1].crash()
        with pytest.raises(ExpertError, match="exited with code -1 unexpectedly"):
            await pool.url_for("coder")
        assert pool.supervisor.crashes == {"coder": 2} and pool.supervisor.starts == {"coder": 2}
        assert pool.state("coder") == "failed" and "unexpectedly" in (pool.error("coder") or "")
    await pool.url_for("coder")  # outside the limit: started again on its next use
    assert pool.supervisor.starts == {"coder": 3} and len(servers) == 3
    pool.stop_all()
    assert pool.running == {} and pool.state("coder") == "cold"
