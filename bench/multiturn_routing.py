"""Routing turn by turn: does a follow-up stay with its expert, does a real change of topic switch,
does a tool loop never switch, and what does keeping a conversation on its expert save?

Routing part (no expert is called; the default registry's router and the sessions of ``coe.sessions``
through their public stages):

* ``followup_switch_rate``: share of the real follow-ups (MT-Bench turn 2) answered by another expert
  than turn 1;
* ``topic_switch_recall``: conversations made of two conversations whose first turns go to different
  experts when routed alone; share where the second turn goes to its own expert;
* ``tool_loop_switches``: switches inside synthetic tool loops (a tool result whose text is another
  conversation's first turn, the most tempting case); must be 0;
* ``session_lookup_ms_p50``: a session lookup in each store (memory, SQLite, a real Redis on loopback);
* the same routing keys under ``stateless``: every turn routed on its own, as before sessions.

End to end (``--e2e``, real llama-server experts): ``ttft_ms_p50_sticky`` and ``ttft_ms_p50_bounced``,
the time to first token of a follow-up sent to the expert that holds the conversation in its prompt
cache, and of the same follow-up sent to the other expert.

    .venv/bin/python bench/multiturn_routing.py [--data FILE] [--e2e] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _report import emit, machine  # noqa: E402

from coe import CoE, load_config  # noqa: E402
from coe.config.sessions import SessionsConfig  # noqa: E402
from coe.sessions.store import MemoryStore, RedisStore, SessionRecord, SqliteStore  # noqa: E402
from coe.sessions.training import Conversation, held_out, read_conversations  # noqa: E402
from coe.types import Message, Request, RouteDecision  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mt_bench" / "question.jsonl"
ANSWER = "(the expert's answer)"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="two-turn conversations (MT-Bench's shape)")
    p.add_argument("--config", type=Path, default=ROOT / "experts.yaml")
    p.add_argument("--e2e", action="store_true", help="also measure time to first token with real experts")
    p.add_argument("--e2e-conversations", type=int, default=12)
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multiturn_routing.json")
    p.add_argument("--json", action="store_true")
    return p.parse_args()


def _user(text: str) -> Message:
    return Message(role="user", content=text)


async def _turn(coe: CoE, messages: list[Message], session: str) -> tuple[RouteDecision, str]:
    """One turn through the session stages (no expert answers): (the stateless decision, the expert)."""
    sessions = coe.sessions
    assert sessions is not None
    request = Request(messages=messages)
    turn = await sessions.open(request, session, "argument")
    stateless = coe.decide([request])[0]
    decision = sessions.steer(turn, request, stateless, set(coe.config.experts))
    await sessions.close(turn, request, Message(role="assistant", content=ANSWER), decision.expert, decision)
    return stateless, decision.expert


async def routing(coe: CoE, convs: list[Conversation], run: str) -> dict[str, Any]:
    """``run`` prefixes the session ids, so that two runs in one process never share a session."""
    n = len(convs)
    firsts = [await _turn(coe, [_user(c.turns[0])], f"{run}f{i}") for i, c in enumerate(convs)]
    follow = [
        await _turn(
            coe,
            [_user(c.turns[0]), Message(role="assistant", content=ANSWER), _user(c.turns[1])],
            f"{run}f{i}",
        )
        for i, c in enumerate(convs)
    ]
    alone = [d.expert for d, _ in firsts]
    pairs = [(i, j) for i, j in itertools.permutations(range(n), 2) if alone[i] != alone[j]]
    hits = stateless_hits = 0
    for k, (i, j) in enumerate(pairs):
        await _turn(coe, [_user(convs[i].turns[0])], f"{run}t{k}")
        history = [
            _user(convs[i].turns[0]),
            Message(role="assistant", content=ANSWER),
            _user(convs[j].turns[0]),
        ]
        stateless, expert = await _turn(coe, history, f"{run}t{k}")
        hits += expert == alone[j]
        stateless_hits += stateless.expert == alone[j]
    loops = stateless_loops = 0
    for i, c in enumerate(convs):
        j = (i + 1) % n  # a tool result that reads like another conversation's request
        await _turn(coe, [_user(c.turns[0])], f"{run}l{i}")
        loop = [
            _user(c.turns[0]),
            Message(role="assistant", content='{"tool": "search"}'),
            Message(role="tool", content=convs[j].turns[0]),
        ]
        stateless, expert = await _turn(coe, loop, f"{run}l{i}")
        loops += expert != alone[i]
        stateless_loops += stateless.expert != alone[i]
    return {
        "conversations": n,
        "topic_pairs": len(pairs),
        "followup_switch_rate": round(sum(e != a for (_, e), a in zip(follow, alone, strict=True)) / n, 4),
        "topic_switch_recall": round(hits / len(pairs), 4) if pairs else None,
        "tool_loop_switches": loops,
        "stateless": {
            "followup_switch_rate": round(
                sum(d.expert != a for (d, _), a in zip(follow, alone, strict=True)) / n, 4
            ),
            "topic_switch_recall": 1.0
            if pairs
            else None,  # routed alone, the second turn goes where it would
            "tool_loop_switches": stateless_loops,
        },
    }


async def lookups(n: int) -> dict[str, float]:
    """p50 of one lookup by alias (the stateless client's path: alias, then record) in each store."""
    from tests.support.redis import redis_binary, redis_server

    cfg = SessionsConfig()
    out: dict[str, float] = {}

    async def time_store(store: Any) -> float:
        for i in range(n):
            await store.put(SessionRecord(id=f"s{i}", expert="coder", turns=1), f"a{i}")
        times = []
        for i in range(n):
            t = time.perf_counter()
            found = await store.get(None, f"a{i}")
            times.append((time.perf_counter() - t) * 1000)
            assert found is not None and found.id == f"s{i}"
        await store.aclose()
        return round(statistics.median(times), 4)

    out["memory"] = await time_store(MemoryStore(cfg.ttl_s, cfg.max_sessions))
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = await time_store(SqliteStore(Path(tmp) / "sessions.db", cfg.ttl_s, cfg.max_sessions))
    if redis_binary() is not None:
        with redis_server() as (url, _):
            out["redis"] = await time_store(RedisStore(url, cfg.ttl_s, cfg.max_sessions, 1.0))
    return out


async def ttft(coe: CoE, convs: list[Conversation]) -> dict[str, Any]:
    """Follow-ups to the expert holding the conversation (sticky) and to the other one (bounced)."""
    experts = list(coe.config.experts)
    sticky: list[float] = []
    bounced: list[float] = []
    params = {"max_tokens": 8, "temperature": 0.0}
    for i, c in enumerate(convs):
        holder, other = experts[i % 2], experts[(i + 1) % 2]
        first = await coe.aask([_user(c.turns[0])], expert=holder, max_tokens=160, temperature=0.0)
        follow = [_user(c.turns[0]), Message(role="assistant", content=first.text), _user(c.turns[1])]
        for expert, into in ((other, bounced), (holder, sticky)):  # bounced first: the holder's cache stays
            t = time.perf_counter()
            async with contextlib.aclosing(coe.astream(follow, expert=expert, **params)) as events:
                async for event in events:
                    if event.type == "delta" and event.text:
                        into.append((time.perf_counter() - t) * 1000)
                        break
    return {
        "conversations": len(convs),
        "ttft_ms_p50_sticky": round(statistics.median(sticky), 1),
        "ttft_ms_p50_bounced": round(statistics.median(bounced), 1),
        "sticky_over_bounced": round(statistics.median(sticky) / statistics.median(bounced), 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    convs = [c for c in read_conversations(args.data) if len(c.turns) >= 2]
    result: dict[str, Any] = {"data": str(args.data)}
    async with CoE(config) as coe:
        result.update(await routing(coe, convs, "all"))
        if args.data == DATA:  # our own split: the part the shipped continuation model never saw
            result["validation"] = await routing(coe, [c for c in convs if held_out(c)], "validation")
        result["session_lookup_ms_p50"] = await lookups(args.lookups)
        if args.e2e:
            result["e2e"] = await ttft(coe, convs[: args.e2e_conversations])
            result["ttft_ms_p50_sticky"] = result["e2e"]["ttft_ms_p50_sticky"]
            result["ttft_ms_p50_bounced"] = result["e2e"]["ttft_ms_p50_bounced"]
    return result


def show(r: dict[str, Any]) -> None:
    print(f"{r['conversations']} conversations, {r['topic_pairs']} topic pairs ({r['data']})")
    print("| routing | followup_switch_rate | topic_switch_recall | tool_loop_switches |")
    print("|---|---|---|---|")
    rows = [("sessions", r), ("stateless", r["stateless"])]
    if "validation" in r:
        rows.append((f"sessions, validation ({r['validation']['conversations']})", r["validation"]))
    for name, v in rows:
        cells = (name, v["followup_switch_rate"], v["topic_switch_recall"], v["tool_loop_switches"])
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print("session_lookup_ms_p50:", r["session_lookup_ms_p50"])
    if "e2e" in r:
        e = r["e2e"]
        print(f"ttft p50: sticky {e['ttft_ms_p50_sticky']} ms, bounced {e['ttft_ms_p50_bounced']} ms "
              f"(ratio {e['sticky_over_bounced']}) over {e['conversations']} follow-ups")  # fmt: skip


if __name__ == "__main__":
    args = parse_args()
    started = machine()
    emit(asyncio.run(main(args)), args.out, args.json, show, started)
