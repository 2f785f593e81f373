"""The semantic cache through `coe serve`: the official openai client against a real uvicorn server
whose experts are real llama.cpp processes, with ``signals.cache`` on a real SQLite file (and, for the
failure case, a real Redis that is then killed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from coe import CoE
from coe.config import CoEConfig
from coe.config.signals import CacheConfig, SignalsConfig
from coe.server import ServerSettings, create_app
from tests.e2e.test_server import ServerThread
from tests.support.procs import wait_gone
from tests.support.redis import redis_binary, redis_server

pytestmark = pytest.mark.e2e
SHORT = {"max_tokens": 16, "temperature": 0.0}
QUESTION = "Write a Python function that reverses a string"
PARAPHRASE = "Write a Python function which reverses a string"


def with_cache(config: CoEConfig, **cache: Any) -> CoEConfig:
    return config.model_copy(update={"signals": SignalsConfig(cache=CacheConfig(**cache))})


@pytest.fixture(scope="module")
def server(default_config: CoEConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    db = tmp_path_factory.mktemp("cache") / "cache.db"
    config = with_cache(default_config, store="sqlite", path=str(db))
    app = create_app(config, ServerSettings(max_tokens_limit=256))
    running = ServerThread(app)
    running.start()
    deadline = time.monotonic() + 180
    while httpx.get(running.url + "/readyz", timeout=5).status_code != 200:  # warm-up starts the experts
        assert time.monotonic() < deadline
        time.sleep(0.25)
    pids = set(app.state.coe.pool.running.values())
    yield running
    running.stop()
    assert not wait_gone(pids)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=kw.pop("model", "coe"), messages=messages, extra_body={"coe": {"trace": True}}, **SHORT, **kw
    )


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_the_second_identical_request_is_a_hit_and_a_paraphrase_hits(client: openai.OpenAI) -> None:
    first = chat(client, user(QUESTION))
    assert first.headers["x-coe-cache"] == "miss"
    second = chat(client, user(QUESTION))
    assert second.headers["x-coe-cache"] == "hit" and second.headers["x-coe-cache-match"] == "exact"
    assert second.headers["x-coe-cache-entry"]
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.model == a.model and second.headers["x-coe-expert"] == first.headers["x-coe-expert"]
    trace = b.model_extra["coe"]
    assert trace["attempts"] == [] and trace["cache"]["status"] == "hit"  # no expert was called
    para = chat(client, user(PARAPHRASE))
    assert para.headers["x-coe-cache"] == "hit", para.parse().model_extra["coe"]["cache"]
    assert para.headers["x-coe-cache-match"] == "semantic"
    assert float(para.headers["x-coe-cache-similarity"]) > 0.9
    assert para.parse().choices[0].message.content == a.choices[0].message.content


def test_zero_hits_across_conversations_tools_and_system_prompts(client: openai.OpenAI) -> None:
    chat(client, user(QUESTION))  # cached (again) in the plain scope
    tool = {
        "type": "function",
        "function": {
            "name": "run_python",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
    noted = {"role": "assistant", "content": "Noted."}
    variants = [
        [{"role": "user", "content": "I only write Rust."}, noted, *user(QUESTION)],
        [{"role": "user", "content": "I only write Go."}, noted, *user(QUESTION)],
        [{"role": "system", "content": "Answer in French."}, *user(QUESTION)],
        [{"role": "system", "content": "Answer in German."}, *user(QUESTION)],
    ]
    statuses = [chat(client, m).headers["x-coe-cache"] for m in variants]
    statuses.append(chat(client, user(QUESTION), tools=[tool]).headers["x-coe-cache"])
    assert statuses == ["miss"] * 5
    # Each variant is cached in its own scope: asked again, each hits only itself.
    assert chat(client, variants[0]).headers["x-coe-cache"] == "hit"


def test_a_stream_replays_as_a_stream(client: openai.OpenAI) -> None:
    whole = chat(client, user("Tell me a short story about a fox")).parse().choices[0].message.content
    with client.chat.completions.with_streaming_response.create(
        model="coe", messages=user("Tell me a short story about a fox"), stream=True, **SHORT
    ) as response:
        assert response.headers["x-coe-cache"] == "hit"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [c for c in response.parse() if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_metrics_count_hits_and_misses(server: ServerThread) -> None:
    text = httpx.get(server.url + "/metrics").text
    assert 'coe_cache_lookups_total{match="exact",result="hit"}' in text
    assert 'coe_cache_lookups_total{match="none",result="miss"}' in text


@pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (make venv)")
def test_a_dead_redis_degrades_to_no_cache_with_a_trace_note(default_config: CoEConfig) -> None:
    async def go(url: str, proc: Any) -> list[Any]:
        async with CoE(with_cache(default_config, store="redis", url=url, timeout_s=0.5)) as coe:
            first = await coe.aask(QUESTION, expert="coder", max_tokens=8, temperature=0)
            proc.kill()
            proc.wait()
            return [first, await coe.aask(QUESTION, expert="coder", max_tokens=8, temperature=0)]

    with redis_server() as (url, proc):
        first, second = asyncio.run(go(url, proc))
    assert first.trace.cache is not None and first.trace.cache.status == "miss"
    cache = second.trace.cache
    assert cache is not None and cache.status == "error" and cache.error is not None
    assert cache.error.startswith(f"redis {url}") and second.text.strip()
    assert second.trace.attempts[0].ok  # answered by the expert, uncached


def test_state_dir_database_is_the_default_for_serve(default_config: CoEConfig) -> None:
    coe = CoE(with_cache(default_config), session_store="sqlite")
    assert coe.cache is not None and coe.cache.store.kind == "sqlite"
    assert str(coe.cache.store.path) == str(coe.pool.state_dir / "cache.db")  # type: ignore[attr-defined]


def test_the_responses_api_shares_the_gateway_cache(client: openai.OpenAI) -> None:
    ask = {"model": "coe", "input": "Name three primary colours", "max_output_tokens": 16, "temperature": 0}
    first = client.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    second = client.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert (first.headers["x-coe-cache"], second.headers["x-coe-cache"]) == ("miss", "hit")
    assert second.parse().output_text == first.parse().output_text


def test_the_messages_api_replays_from_the_cache_too(server: ServerThread) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    messages: Any = user("Name a large ocean")
    greedy = {"temperature": 0}  # this SDK version has no temperature argument: sent as is
    ask = {"model": "coe", "max_tokens": 16, "messages": messages, "extra_body": greedy}
    first = client.messages.with_raw_response.create(**ask)
    second = client.messages.with_raw_response.create(**ask)
    assert (first.headers["x-coe-cache"], second.headers["x-coe-cache"]) == ("miss", "hit")
    a, b = first.parse().content[0], second.parse().content[0]
    assert a.type == b.type == "text" and a.text == b.text
