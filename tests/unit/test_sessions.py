"""Sessions without experts: finding a conversation again, the keep-or-switch rule, the stores
(memory and SQLite; Redis is in tests/integration), the continuation model's file, the settings."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from coe.config import parse_config
from coe.errors import ConfigError
from coe.sessions.continuation import SHIPPED, ContinuationHeader, ContinuationModel
from coe.sessions.identity import continued_key, history_key, tool_loop_open
from coe.sessions.policy import Kept, steer
from coe.sessions.store import MemoryStore, SessionRecord, SqliteStore, StoredResponse, StoreUnavailable
from coe.types import Message, RouteDecision

ROUTES = {"code": "coder", "math": "coder", "general": "general"}


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ identity


def test_a_resent_history_finds_the_session_its_last_answer_was_stored_under() -> None:
    turn1 = msgs(("system", "Be brief."), ("user", "Write a sort in Python"))
    assert history_key(turn1) is None  # a first turn starts a session of its own
    stored = continued_key(turn1, Message(role="assistant", content="def sort(x):\n    return sorted(x)"))
    turn2 = [*turn1, *msgs(("assistant", "def sort(x):  \n  return sorted(x) "), ("user", "Now in Rust"))]
    assert history_key(turn2) == stored  # trimmed and re-wrapped by the client: the same conversation


def test_an_answer_with_tool_calls_is_found_again_when_resent_with_them() -> None:
    call = {"id": "c1", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    said = Message.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
    turn1 = msgs(("user", "Weather in Paris?"))
    resent = [*turn1, said, Message.model_validate({"role": "tool", "tool_call_id": "c1", "content": "12 C"})]
    assert tool_loop_open(resent)
    other = Message.model_validate(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {**call, "id": "c2", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}
            ],
        }
    )
    assert continued_key(turn1, said) != continued_key(turn1, other)
    follow = [*turn1, said, *msgs(("user", "And tomorrow?"))]
    assert history_key(follow) == continued_key(turn1, said)


def test_another_history_or_another_role_is_another_conversation() -> None:
    base = msgs(("user", "hi"), ("assistant", "hello"), ("user", "next"))
    other_system = [Message(role="system", content="Be formal."), *base]
    pasted = msgs(("user", "hi"), ("user", "hello"), ("user", "next"))
    assert len({history_key(base), history_key(other_system), history_key(pasted)}) == 3


def test_a_tool_result_at_the_end_is_an_open_tool_loop() -> None:
    assert tool_loop_open(msgs(("user", "weather?"), ("assistant", "{call}"), ("tool", "12 C")))
    assert not tool_loop_open(msgs(("user", "weather?"), ("assistant", "12 C"), ("user", "thanks")))


# -------------------------------------------------------------------------------------- policy


def decision(category: str, p: float) -> RouteDecision:
    rest = (1 - p) / 2
    scores = {c: (p if c == category else rest) for c in ROUTES}
    return RouteDecision(
        router="category", experts=[ROUTES[category]], category=category, confidence=p, scores=scores
    )


KEPT = Kept("s1", "coder", ("coder",), "code")


def outcome(new: RouteDecision, f: float, *, tool_loop: bool = False, conf: float = 0.6, margin: float = 0.2):  # type: ignore[no-untyped-def]
    return steer(new, KEPT, continuation=f, tool_loop=tool_loop, category_experts=ROUTES,
                 switch_confidence=conf, switch_margin=margin)  # fmt: skip


def test_a_follow_up_stays_whatever_the_router_thinks_of_it_alone() -> None:
    out = outcome(decision("general", 0.95), f=0.9)
    assert out.action == "kept" and out.decision.expert == "coder" and out.decision.category == "code"
    assert "kept expert 'coder' for session s1" in out.decision.reason


def test_a_new_topic_switches_when_clear_and_confident() -> None:
    out = outcome(decision("general", 0.95), f=0.05)
    assert out.action == "switched" and out.decision.expert == "general"
    assert out.reason.startswith("switched from 'coder' to 'general': p=0.90, margin=")


def test_an_unclear_change_keeps_the_expert_and_says_why() -> None:
    out = outcome(decision("general", 0.7), f=0.1, conf=0.7)  # p(general) = 0.63 < switch_confidence
    assert out.action == "kept" and out.decision.expert == "coder" and "below switch_confidence" in out.reason


def test_a_tool_loop_never_switches() -> None:
    out = outcome(decision("general", 0.99), f=0.0, tool_loop=True, conf=0.0, margin=0.0)
    assert out.action == "tool_loop" and out.decision.expert == "coder"


def test_a_first_turn_is_routed_as_it_would_be_alone() -> None:
    new = decision("general", 0.7)
    out = steer(new, None, continuation=0.0, tool_loop=False, category_experts=ROUTES,
                switch_confidence=0.6, switch_margin=0.2)  # fmt: skip
    assert out.action == "new" and out.decision == new


# -------------------------------------------------------------------------------------- stores


def stores(tmp_path: Path, ttl_s: float = 3600, size: int = 100) -> list[object]:
    return [MemoryStore(ttl_s, size), SqliteStore(tmp_path / "s.db", ttl_s, size)]


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "sqlite"])
async def test_a_store_finds_a_session_by_id_and_by_alias(kind: int, tmp_path: Path) -> None:
    store = stores(tmp_path)[kind]
    await store.put(SessionRecord(id="s1", expert="coder", turns=1), "alias-1")  # type: ignore[attr-defined]
    by_id = await store.get("s1", None)  # type: ignore[attr-defined]
    by_alias = await store.get(None, "alias-1")  # type: ignore[attr-defined]
    assert by_id is not None and by_alias is not None and by_id.expert == by_alias.expert == "coder"
    assert await store.get(None, "alias-2") is None and await store.get("s2", None) is None  # type: ignore[attr-defined]
    assert await store.delete("s1") and await store.get("s1", None) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "sqlite"])
async def test_a_store_forgets_after_ttl_and_keeps_at_most_max_sessions(kind: int, tmp_path: Path) -> None:
    store = stores(tmp_path, ttl_s=60, size=3)[kind]
    old = SessionRecord(id="old", expert="coder", updated=time.time() - 120)
    await store.put(old, "a-old")  # type: ignore[attr-defined]
    assert await store.get("old", None) is None and await store.get(None, "a-old") is None  # type: ignore[attr-defined]
    for i in range(5):
        await store.put(SessionRecord(id=f"s{i}", expert="coder", updated=time.time() + i), None)  # type: ignore[attr-defined]
    if isinstance(store, SqliteStore):
        await store.flush()  # written behind the request; write the pending turns now
        store._trim(store._conn())  # the size sweep runs every few hundred puts; run it now
    listed = [r.id for r in await store.list(10)]  # type: ignore[attr-defined]
    assert listed == ["s4", "s3", "s2"]  # the least recently continued went first
    assert await store.clear() == 3 and await store.list(10) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "sqlite"])
async def test_a_store_keeps_responses_for_previous_response_id_until_ttl(kind: int, tmp_path: Path) -> None:
    store = stores(tmp_path, ttl_s=60)[kind]
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}]
    await store.put_response(StoredResponse(id="resp_1", session="s1", messages=turns))  # type: ignore[attr-defined]
    await store.put_response(StoredResponse(id="resp_old", created=time.time() - 120))  # type: ignore[attr-defined]
    found = await store.get_response("resp_1")  # type: ignore[attr-defined]
    assert found is not None and found.session == "s1" and found.messages == turns
    assert await store.get_response("resp_old") is None and await store.get_response("resp_2") is None  # type: ignore[attr-defined]
    await store.clear()  # type: ignore[attr-defined]
    assert await store.get_response("resp_1") is None  # type: ignore[attr-defined]


async def test_sqlite_sessions_survive_reopening_the_file(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "s.db", 3600, 100)
    await first.put(SessionRecord(id="s1", expert="general", turns=3), "a1")
    await first.aclose()
    again = SqliteStore(tmp_path / "s.db", 3600, 100)
    found = await again.get(None, "a1")
    assert found is not None and found.turns == 3 and found.expert == "general"


async def test_a_corrupt_sqlite_file_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match=r"sqlite .*s\.db"):
        await SqliteStore(path, 3600, 100).get("s1", None)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("SELECT 1 FROM sessions")


def test_a_record_keeps_the_last_turns_vector_in_its_space() -> None:
    v = np.linspace(-1, 1, 384).astype(np.float32)
    record = SessionRecord(id="s", expert="coder", vector=SessionRecord.pack(v), space="minilm")
    back = record.last_vector("minilm")
    assert back is not None and np.allclose(back, v, atol=1e-3)
    assert record.last_vector("another-space") is None


# ------------------------------------------------------------------------ model file, settings


def test_the_continuation_model_file_round_trips_and_refuses_other_files(tmp_path: Path) -> None:
    header = ContinuationHeader(space="x", max_tokens=48, switch_confidence=0.5, switch_margin=0.1)
    model = ContinuationModel(header, np.zeros(388, dtype=np.float32), 2.0)
    model.save(tmp_path / "c.npz")
    back = ContinuationModel.load(tmp_path / "c.npz")
    assert back.header == header and back.probability(np.zeros(384), None, "hi") == pytest.approx(
        1 / (1 + np.exp(-2))
    )
    np.savez(tmp_path / "other.npz", coef=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz"):
        ContinuationModel.load(tmp_path / "other.npz")


def test_the_shipped_continuation_model_is_for_the_default_encoder() -> None:
    model = ContinuationModel.load(SHIPPED)
    assert model.header.space == "all-MiniLM-L6-v2+int8" and model.coef.shape == (388,)
    # a turn that refers back continues more than the same-length standalone request
    rng = np.random.default_rng(0)
    v = rng.normal(size=384).astype(np.float32)
    v /= np.linalg.norm(v)
    assert model.probability(v, v, "Rewrite your previous response as a poem.") > model.probability(
        v, -v, "Write a SQL query that returns the top customers."
    )


EXPERTS = (
    "experts:\n  a: {endpoint: 'http://127.0.0.1:9/v1'}\n"
    "router:\n  categories: {x: {expert: a, examples: [hi]}}\n"
)


def test_sessions_settings_name_their_key_path() -> None:
    with pytest.raises(ConfigError, match=r"router\.sessions: store redis needs url"):
        parse_config(EXPERTS + "  sessions: {store: redis}\n")
    with pytest.raises(
        ConfigError, match=r"router\.sessions\.switch_margin: Input should be less than or equal to 1"
    ):
        parse_config(EXPERTS + "  sessions: {switch_margin: 3}\n")
    cfg = parse_config(EXPERTS + "  sessions: {store: sqlite, path: s.db, ttl_s: 60}\n").router.sessions
    assert cfg.enabled and cfg.store == "sqlite" and cfg.ttl_s == 60
