"""Sessions through the library and `coe serve`, with the default registry's router and encoder and
stub experts (what an expert answers does not matter here, who answers does): sessions keyed each
way, stickiness and switching on hand-made conversations, the tool-loop lock, SQLite surviving a
restart of a real `coe serve` process, two processes sharing one real Redis, and Redis killed
mid-run degrading to stateless routing with no failed request, and a broken SQLite file doing the
same until it is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from coe import CoE, load_config
from coe.experts.process import free_port
from coe.server import ServerSettings, create_app
from coe.sessions.store import RedisStore, SessionRecord
from coe.signals.cache.store import CacheEntry, RedisCache
from coe.types import Message
from tests.support.paths import DEFAULT_REGISTRY, ROOT
from tests.support.redis import redis_binary, redis_server
from tests.support.stub_server import stub_server

CODE = "Write a Python function that checks whether a number is prime."
# Routed alone, this follow-up goes to the general expert; it continues the coding conversation.
FOLLOW_UP = "How to use CSS to change the color of the output to red?"
NEW_TOPIC = "Tell me a short story about a dragon who is afraid of fire."
needs_redis = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (make venv)")


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, str]]:
    with stub_server("ok", "from coder") as (coder, _), stub_server("ok", "from general") as (general, _):
        yield {"coder": coder, "general": general}


def registry(folder: Path, stubs: dict[str, str], sessions: str = "") -> Path:
    """The default registry's router and encoder over stub experts (plus a sessions block)."""
    _, _, routing = DEFAULT_REGISTRY.read_text().partition("\nrouter:\n")
    experts = "".join(f"  {name}: {{endpoint: '{url}', retries: 0}}\n" for name, url in stubs.items())
    text = f"version: 1\nembedder: {{backend: onnx-int8}}\nexperts:\n{experts}router:\n{routing}"
    if sessions:
        text = text.replace("\naggregator:", f"\n  sessions: {sessions}\naggregator:")
    path = folder / "experts.yaml"
    path.write_text(text)
    return path


def conversation(*turns: str, answer: str = "an answer") -> list[Message]:
    out: list[Message] = []
    for i, turn in enumerate(turns):
        if i:
            out.append(Message(role="assistant", content=answer))
        out.append(Message(role="user", content=turn))
    return out


@pytest.fixture(scope="module")
def coe(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, str]) -> Iterator[CoE]:
    with CoE(load_config(registry(tmp_path_factory.mktemp("lib"), stubs))) as c:
        yield c


def test_a_follow_up_stays_with_its_expert_and_the_trace_shows_the_stateless_decision(coe: CoE) -> None:
    first = coe.ask(conversation(CODE), session="lib-1")
    assert first.expert == "coder" and first.trace.session is not None
    assert (first.trace.session.action, first.trace.session.turn, first.trace.session.id) == (
        "new",
        1,
        "lib-1",
    )
    second = coe.ask(conversation(CODE, FOLLOW_UP), session="lib-1")
    s = second.trace.session
    assert s is not None and second.expert == "coder"
    assert s.action == "kept" and s.turn == 2 and s.expert == "coder" and s.source == "argument"
    assert s.stateless is not None and s.stateless.expert == "general"  # what it would have got alone
    assert s.reason.startswith("kept expert 'coder' for session lib-1")


def test_a_real_change_of_topic_switches(coe: CoE) -> None:
    coe.ask(conversation(CODE), session="lib-2")
    answer = coe.ask(conversation(CODE, NEW_TOPIC), session="lib-2")
    s = answer.trace.session
    assert answer.expert == "general" and s is not None and s.action == "switched"
    assert s.reason.startswith("switched from 'coder' to 'general': p=")


def test_a_tool_loop_never_switches(coe: CoE) -> None:
    coe.ask(conversation(CODE), session="lib-3")
    loop = [
        *conversation(CODE),
        Message(role="assistant", content="{}"),
        Message(role="tool", content=NEW_TOPIC),
    ]
    answer = coe.ask(loop, session="lib-3")
    assert answer.expert == "coder" and answer.trace.session is not None
    assert answer.trace.session.action == "tool_loop"


def test_a_stateless_client_resending_history_finds_its_session(coe: CoE) -> None:
    first = coe.ask(conversation(CODE))
    assert first.trace.session is not None and first.trace.session.source == "new"
    second = coe.ask(conversation(CODE, FOLLOW_UP, answer=first.text))
    s = second.trace.session
    assert s is not None and s.source == "history" and s.id == first.trace.session.id and s.action == "kept"
    other = coe.ask(conversation(CODE, FOLLOW_UP, answer="an answer this server never gave"))
    assert other.trace.session is not None and other.trace.session.source == "history"
    assert other.trace.session.action == "new"  # no stored conversation has that history


def test_a_pinned_expert_is_never_switched(coe: CoE) -> None:
    answer = coe.ask(conversation(CODE, NEW_TOPIC), session="lib-4", expert="coder")
    assert answer.expert == "coder" and answer.trace.session is not None
    assert answer.trace.session.action == "pinned"


def test_sessions_can_be_turned_off(tmp_path: Path, stubs: dict[str, str]) -> None:
    with CoE(load_config(registry(tmp_path, stubs, "{enabled: false}"))) as c:
        answer = c.ask(conversation(CODE, FOLLOW_UP), session="off")
    assert answer.trace.session is None and answer.expert == "general"  # as before sessions


# ------------------------------------------------------------------------------ the server


def chat(client: Any, messages: list[Message], headers: dict[str, str] | None = None, **body: Any) -> Any:
    payload = {"model": "coe", "messages": [m.model_dump() for m in messages], "coe": {"trace": True}, **body}
    response = client.post("/v1/chat/completions", json=payload, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def test_the_server_keys_sessions_by_header_or_metadata_like_the_library(
    tmp_path: Path, stubs: dict[str, str], coe: CoE
) -> None:
    config = load_config(registry(tmp_path, stubs, f"{{store: sqlite, path: '{tmp_path / 's.db'}'}}"))
    with TestClient(create_app(config, ServerSettings(warm=False))) as client:
        for key, extra in (
            ("header", {"headers": {"x-coe-session": "srv-1"}}),
            ("metadata", {"metadata": {"session_id": "srv-2"}}),
        ):
            first = chat(client, conversation(CODE), **extra)
            second = chat(client, conversation(CODE, FOLLOW_UP), **extra)
            s = second.json()["coe"]["session"]
            assert (s["source"], s["action"], s["turn"]) == (key, "kept", 2)
            assert second.headers["x-coe-session"] == first.headers["x-coe-session"] == s["id"]
            assert second.headers["x-coe-expert"] == "coder"
        switched = chat(client, conversation(CODE, NEW_TOPIC), {"x-coe-session": "srv-1"})
        assert switched.headers["x-coe-expert"] == "general"
        metrics = client.get("/metrics").text
        assert 'coe_session_turns_total{action="kept"} 2.0' in metrics
    library = [
        coe.ask(conversation(*turns), session="same").expert
        for turns in ((CODE,), (CODE, FOLLOW_UP), (CODE, FOLLOW_UP, NEW_TOPIC))
    ]
    assert library == ["coder", "coder", "general"]


def test_a_stream_carries_the_session_in_its_headers(tmp_path: Path, stubs: dict[str, str]) -> None:
    config = load_config(registry(tmp_path, stubs, f"{{store: sqlite, path: '{tmp_path / 's.db'}'}}"))
    with TestClient(create_app(config, ServerSettings(warm=False))) as client:
        chat(client, conversation(CODE), {"x-coe-session": "st-1"})
        response = chat(client, conversation(CODE, FOLLOW_UP), {"x-coe-session": "st-1"}, stream=True)
        assert response.headers["x-coe-session"] == "st-1" and response.headers["x-coe-expert"] == "coder"
        assert response.text.rstrip().endswith("data: [DONE]")


# -------------------------------------------------------------------- real coe serve processes


class Serve:
    """`python -m coe serve` on a free port, started and stopped like a user would."""

    def __init__(self, config: Path, state: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "COE_CACHE_DIR": str(state)}
        serve = ["serve", "-c", str(config), "--port", str(self.port), "--no-warm"]
        args = [sys.executable, "-m", "coe", *serve]
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "coe serve did not start"
            time.sleep(0.2)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)  # the first request loads the encoder

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) is not None


def test_sqlite_sessions_survive_a_restart_of_coe_serve(tmp_path: Path, stubs: dict[str, str]) -> None:
    config = registry(tmp_path, stubs)  # no store given: coe serve keeps sessions in SQLite
    server = Serve(config, tmp_path / "cache")
    try:
        first = chat(server.client(), conversation(CODE))
    finally:
        server.stop()
    server = Serve(config, tmp_path / "cache")
    try:
        second = chat(server.client(), conversation(CODE, FOLLOW_UP, answer="from coder"))
    finally:
        server.stop()
    s = second.json()["coe"]["session"]
    assert s["source"] == "history" and s["id"] == first.headers["x-coe-session"] and s["turn"] == 2
    assert s["action"] == "kept" and second.headers["x-coe-expert"] == "coder"
    env = {**os.environ, "COE_CACHE_DIR": str(tmp_path / "cache")}

    def sessions(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "coe", "sessions", *args, "-c", str(config)]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)

    listed = sessions("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert s["id"] in listed.stdout and '"turns": 2' in listed.stdout
    shown = sessions("show", s["id"])
    assert shown.returncode == 0 and '"expert": "coder"' in shown.stdout
    assert sessions("clear", s["id"]).stdout.strip() == f"cleared session {s['id']}"
    missing = sessions("show", s["id"])
    assert missing.returncode == 1 and f"no session '{s['id']}'" in missing.stderr


@needs_redis
def test_two_servers_sharing_redis_keep_one_session_on_one_expert(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    with redis_server() as (url, _):
        config = registry(tmp_path, stubs, f"{{store: redis, url: '{url}'}}")
        a, b = Serve(config, tmp_path / "a"), Serve(config, tmp_path / "b")
        try:
            first = chat(a.client(), conversation(CODE), {"x-coe-session": "shared"})
            second = chat(b.client(), conversation(CODE, FOLLOW_UP), {"x-coe-session": "shared"})
        finally:
            a.stop()
            b.stop()
    assert first.headers["x-coe-expert"] == second.headers["x-coe-expert"] == "coder"
    s = second.json()["coe"]["session"]
    assert (s["action"], s["turn"], s["id"]) == ("kept", 2, "shared")


@needs_redis
def test_a_dead_redis_degrades_to_stateless_routing_without_failing_a_request(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    with redis_server() as (url, proc):
        config = load_config(registry(tmp_path, stubs, f"{{store: redis, url: '{url}', timeout_s: 0.5}}"))
        with TestClient(create_app(config, ServerSettings(warm=False))) as client:
            chat(client, conversation(CODE), {"x-coe-session": "r1"})
            assert (
                chat(client, conversation(CODE, FOLLOW_UP), {"x-coe-session": "r1"}).json()["coe"]["session"][
                    "action"
                ]
                == "kept"
            )
            proc.kill()
            proc.wait()
            answers = [chat(client, conversation(CODE, FOLLOW_UP), {"x-coe-session": "r1"}) for _ in range(3)]
            metrics = client.get("/metrics").text
    for response in answers:
        s = response.json()["coe"]["session"]
        assert s["action"] == "stateless" and s["error"].startswith(f"redis {url}")
        assert response.headers["x-coe-expert"] == "general"  # what the turn gets on its own
    assert "coe_session_store_errors_total 3.0" in metrics  # one per turn routed statelessly


def test_a_broken_sqlite_file_degrades_to_stateless_routing_and_recovers_once_replaced(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    """The SQLite store on the request path, as the Redis one above: a file that is not a database
    fails every store call, each turn is routed on its own and answered; once the file is gone the
    next call reopens the store and a conversation is kept again."""
    db = tmp_path / "s.db"
    config = load_config(registry(tmp_path, stubs, f"{{store: sqlite, path: '{db}'}}"))
    db.write_bytes(b"this is not a database " * 200)
    with TestClient(create_app(config, ServerSettings(warm=False))) as client:
        answers = [chat(client, conversation(CODE, FOLLOW_UP), {"x-coe-session": "q1"}) for _ in range(3)]
        metrics = client.get("/metrics").text
        db.unlink()
        chat(client, conversation(CODE), {"x-coe-session": "q2"})
        kept = chat(client, conversation(CODE, FOLLOW_UP), {"x-coe-session": "q2"})
    for response in answers:
        s = response.json()["coe"]["session"]
        assert s["action"] == "stateless" and s["error"].startswith(f"sqlite {db}")
        assert response.headers["x-coe-expert"] == "general"  # what the turn gets on its own
    assert "coe_session_store_errors_total 3.0" in metrics  # one per turn routed statelessly
    s = kept.json()["coe"]["session"]
    assert (s["action"], s["turn"], s["error"]) == ("kept", 2, None) and kept.headers[
        "x-coe-expert"
    ] == "coder"


@needs_redis
def test_a_response_stored_by_one_server_is_continued_through_another_sharing_redis(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    """previous_response_id behind a load balancer: replicas sharing Redis share stored responses."""
    with redis_server() as (url, _):
        config = load_config(registry(tmp_path, stubs, f"{{store: redis, url: '{url}'}}"))
        settings = ServerSettings(warm=False)
        with TestClient(create_app(config, settings)) as a, TestClient(create_app(config, settings)) as b:
            body = {"model": "coe", "input": CODE, "coe": {"trace": True}}
            first = a.post("/v1/responses", json=body)
            assert first.status_code == 200, first.text
            follow = {"model": "coe", "input": FOLLOW_UP, "previous_response_id": first.json()["id"]}
            second = b.post("/v1/responses", json={**follow, "coe": {"trace": True}})
            assert second.status_code == 200, second.text
    s = second.json()["coe"]["session"]
    assert s["source"] == "previous_response_id" and s["id"] == first.headers["x-coe-session"]
    assert (s["action"], s["turn"]) == ("kept", 2) and second.headers["x-coe-expert"] == "coder"


@needs_redis
def test_clearing_sessions_on_a_shared_redis_leaves_the_semantic_cache() -> None:
    async def run(url: str) -> tuple[int, bool]:
        sessions, cache = RedisStore(url, 3600, 100, 1.0), RedisCache(url, 3600, 100, 1.0)
        await sessions.put(SessionRecord(id="s1", expert="coder"), "alias-1")
        await cache.put(CacheEntry(id="e1", scope="k", text="hi", answer={"text": "hello"}))
        cleared = await sessions.clear()
        kept = await cache.exact("e1") is not None
        await sessions.aclose()
        await cache.aclose()
        return cleared, kept

    with redis_server() as (url, _):
        assert asyncio.run(run(url)) == (1, True)
