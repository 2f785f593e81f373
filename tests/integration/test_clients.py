"""The HTTP client's failure paths, against a stub server that fails on cue (fault injection only;
the real path is covered by test_e2e against llama-server)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from coe import AllExpertsFailed, CoE
from coe.clients import ChatClient
from coe.errors import ExpertError
from tests.support.stub_server import stub_server

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_ok_returns_the_completion() -> None:
    client = ChatClient()
    with stub_server("ok", "hello there") as (url, state):
        data = await client.chat("stub", url, PAYLOAD)
    await client.aclose()
    assert data["choices"][0]["message"]["content"] == "hello there"
    assert state.bodies[0]["messages"] == PAYLOAD["messages"] and state.bodies[0]["stream"] is False


async def test_5xx_is_retried_with_backoff() -> None:
    client = ChatClient(backoff_s=0.01)
    with stub_server("500-then-ok") as (url, state):
        data = await client.chat("stub", url, PAYLOAD, retries=2)
    await client.aclose()
    assert state.calls == 2
    assert data["choices"][0]["message"]["content"] == "stub answer"


async def test_persistent_500_names_expert_and_status() -> None:
    client = ChatClient(backoff_s=0.01)
    with stub_server("500") as (url, state), pytest.raises(ExpertError) as info:
        await client.chat("flaky", url, PAYLOAD, retries=2)
    await client.aclose()
    assert state.calls == 3
    assert (
        info.value.expert == "flaky"
        and "HTTP 500" in info.value.reason
        and "injected failure" in str(info.value)
    )


async def test_4xx_is_not_retried() -> None:
    client = ChatClient(backoff_s=0.01)
    with stub_server("400") as (url, state), pytest.raises(ExpertError) as info:
        await client.chat("strict", url, PAYLOAD, retries=3)
    await client.aclose()
    assert state.calls == 1 and "HTTP 400" in info.value.reason


async def test_timeout_names_the_expert() -> None:
    client = ChatClient()
    with stub_server("hang") as (url, _), pytest.raises(ExpertError) as info:
        await client.chat("slow", url, PAYLOAD, timeout_s=0.3)
    await client.aclose()
    assert info.value.expert == "slow" and "timed out after 0.3s" in info.value.reason


async def test_connection_refused_names_the_url() -> None:
    client = ChatClient(backoff_s=0.01)
    url = dead_url()
    with pytest.raises(ExpertError) as info:
        await client.chat("gone", url, PAYLOAD, retries=1)
    await client.aclose()
    assert "cannot reach" in info.value.reason and url in info.value.reason


async def test_stream_yields_deltas_and_usage() -> None:
    client = ChatClient()
    with stub_server("ok", "one two three") as (url, _):
        chunks = [c async for c in client.stream("stub", url, PAYLOAD)]
    await client.aclose()
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c.get("choices"))
    assert text == "one two three"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_streams_reuse_one_connection() -> None:
    """A stream read to [DONE] hands its connection back: without that, every streamed request paid
    for a new TCP connection to the expert."""
    client = ChatClient()
    with stub_server("ok", "one two") as (url, state):
        for _ in range(3):
            chunks = [c async for c in client.stream("stub", url, PAYLOAD)]
            assert (
                "".join(c["choices"][0]["delta"]["content"] for c in chunks if c.get("choices")) == "one two"
            )
        await client.chat("stub", url, PAYLOAD)
    await client.aclose()
    assert state.calls == 4 and state.connections == 1


async def test_stream_dropped_after_first_token_raises() -> None:
    client = ChatClient(backoff_s=0.01)
    got: list[str] = []
    with stub_server("drop-stream", "one two three") as (url, state), pytest.raises(ExpertError) as info:
        async for chunk in client.stream("dropper", url, PAYLOAD):
            got.append(chunk["choices"][0]["delta"]["content"])
    await client.aclose()
    assert got == ["one"]  # what arrived is kept; nothing is repeated by a retry
    assert state.calls == 1
    assert info.value.expert == "dropper"


async def test_stream_dropped_before_first_byte_is_retried_then_reported() -> None:
    client = ChatClient(backoff_s=0.01)
    with stub_server("drop-before-stream") as (url, state), pytest.raises(ExpertError) as info:
        async for _ in client.stream("dropper", url, PAYLOAD, retries=2):
            pass
    await client.aclose()
    assert state.calls == 3 and "cannot reach" in info.value.reason


# ---------------------------------------------------------------- provider experts via litellm


def provider_registry(tmp_path, endpoint: str) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "experts.yaml"
    path.write_text(
        "version: 1\nexperts:\n  hosted:\n    provider: openai/stub-model\n"
        f"    endpoint: {endpoint}\n    api_key: sk-test\n    retries: 0\n    timeout_s: 5\n"
        "router:\n  categories:\n    any: {expert: hosted, examples: ['hello']}\n"
    )
    return path


def test_provider_expert_goes_through_litellm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with (
        stub_server("ok", "from litellm") as (url, state),
        CoE.from_yaml(provider_registry(tmp_path, url)) as coe,
    ):
        answer = coe.ask("hello", expert="hosted", max_tokens=5)
    assert answer.text == "from litellm" and answer.expert == "hosted"
    assert state.bodies[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert state.bodies[0]["max_tokens"] == 5


def test_failing_provider_expert_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with (
        stub_server("400") as (url, _),
        CoE.from_yaml(provider_registry(tmp_path, url)) as coe,
        pytest.raises(AllExpertsFailed) as info,
    ):
        coe.ask("hello", expert="hosted")
    assert "hosted" in info.value.errors and "openai/stub-model" in info.value.errors["hosted"]
