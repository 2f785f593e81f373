"""Anthropic's Messages API as its SDK and spec expect it, on stub experts: every response under
/v1/messages in Anthropic's error shape (404, 405, 401, 413, 429, 503), ``toolu_`` tool-use ids
mapped back to the expert's own, ``anthropic-version`` / ``anthropic-beta``, and count_tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from fastapi.testclient import TestClient

from coe import load_config
from coe.server import ServerSettings, create_app
from tests.integration.test_server_faults import make_registry
from tests.support.stub_server import StubState, stub_server
from tests.support.wire import check_message

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"name": "get_weather", "description": "Weather", "input_schema": PARAMS}
CALL = {
    "id": "call_xyz",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[tuple[Path, dict[str, StubState]]]:
    with ExitStack() as stack:
        experts, states = {}, {}
        for name, mode in {"ok": "ok", "bad": "500", "hang": "hang"}.items():
            url, state = stack.enter_context(stub_server(mode, text=f"answer from {name}"))  # type: ignore[arg-type]
            experts[name], states[name] = (url, "timeout_s: 0.5" if name == "hang" else ""), state
        yield make_registry(tmp_path, experts), states


def app_client(path: Path, **settings: Any) -> TestClient:
    app = create_app(load_config(path), ServerSettings(warm=False, **settings))
    return TestClient(app, raise_server_exceptions=False)


def assert_anthropic_error(resp: httpx.Response, status: int, kind: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    assert "Traceback" not in resp.text
    return str(body["error"]["message"])


def test_every_status_under_v1_messages_is_in_anthropics_shape(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    body = {"model": "coe/expert/ok", "max_tokens": 8, "messages": USER}
    with app_client(path, api_keys=frozenset({"sk-1"}), max_body_bytes=4000) as client:
        key = {"x-api-key": "sk-1"}
        assert_anthropic_error(
            client.post("/v1/messages/batches", json=body, headers=key), 404, "not_found_error"
        )
        assert_anthropic_error(client.get("/v1/messages", headers=key), 405, "invalid_request_error")
        assert_anthropic_error(client.post("/v1/messages", json=body), 401, "authentication_error")
        assert_anthropic_error(
            client.post("/v1/messages/count_tokens", json=body), 401, "authentication_error"
        )
        big = {**body, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert_anthropic_error(client.post("/v1/messages", json=big, headers=key), 413, "request_too_large")
        failing = {**body, "model": "coe/expert/bad"}
        message = assert_anthropic_error(
            client.post("/v1/messages", json=failing, headers=key), 503, "overloaded_error"
        )
        assert "bad" in message and "HTTP 500" in message
        unknown = {**body, "model": "gpt-4"}
        assert_anthropic_error(
            client.post("/v1/messages/count_tokens", json=unknown, headers=key), 404, "not_found_error"
        )
        # ... and the OpenAI routes keep OpenAI's shape
        assert set(client.post("/v1/chat/completions", json={}).json()) == {"error"}


async def test_a_full_queue_on_messages_is_anthropics_429(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    app = create_app(load_config(path), ServerSettings(warm=False, max_concurrency=1, max_queue=0))
    body = {"model": "coe/expert/hang", "max_tokens": 8, "messages": USER}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        first = asyncio.create_task(client.post("/v1/messages", json=body))
        for _ in range(1000):
            if states["hang"].calls:
                break
            await asyncio.sleep(0.01)
        second = await client.post("/v1/messages", json=body)
        assert_anthropic_error(second, 429, "rate_limit_error")
        assert second.headers["retry-after"] == "1"
        await first
    await app.state.coe.aclose()


def test_tool_use_ids_are_toolu_and_map_back_to_the_experts_own(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    states["ok"].tool_calls, states["ok"].text = [CALL], ""
    with app_client(path) as http:
        client = anthropic.Anthropic(
            base_url="http://testserver", api_key="x", http_client=http, max_retries=0
        )
        reply = client.messages.create(model="coe/expert/ok", max_tokens=20, messages=USER, tools=[TOOL])
        check_message(reply.model_dump())
        use = reply.content[-1]
        assert use.type == "tool_use" and use.id.startswith("toolu_") and reply.stop_reason == "tool_use"
        with client.messages.stream(
            model="coe/expert/ok", max_tokens=20, messages=USER, tools=[TOOL]
        ) as stream:
            final = stream.get_final_message()  # the SDK's accumulator parses each partial_json
        assert final.content[-1].id == use.id and final.content[-1].input == {"city": "Paris"}
        states["ok"].tool_calls, states["ok"].text = None, "18 C it is"
        turns = [
            *USER,
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}]},
        ]
        after = client.messages.create(model="coe/expert/ok", max_tokens=20, messages=turns, tools=[TOOL])
        assert after.content[0].text == "18 C it is"
        sent = states["ok"].bodies[-1]["messages"]
        assert sent[1]["tool_calls"][0]["id"] == "call_xyz" and sent[2]["tool_call_id"] == "call_xyz"
        # An id CoE did not make (a real Anthropic one) passes unchanged.
        result = {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "x"}
        other = [
            *turns[:1],
            {"role": "assistant", "content": [{**use.model_dump(), "id": "toolu_01A"}]},
            {"role": "user", "content": [result]},
        ]
        client.messages.create(model="coe/expert/ok", max_tokens=20, messages=other, tools=[TOOL])
        assert states["ok"].bodies[-1]["messages"][2]["tool_call_id"] == "toolu_01A"


def test_anthropic_version_and_beta_headers(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    body = {"model": "coe/expert/ok", "max_tokens": 8, "messages": USER}
    with app_client(path) as client:
        for version in ("2023-06-01", "2026-10-21"):
            assert (
                client.post("/v1/messages", json=body, headers={"anthropic-version": version}).status_code
                == 200
            )
        for version in ("2023-01-01", "latest"):
            resp = client.post("/v1/messages", json=body, headers={"anthropic-version": version})
            assert assert_anthropic_error(resp, 400, "invalid_request_error").startswith(
                "anthropic-version: "
            )
        beta = "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14"
        for stream in (False, True):
            resp = client.post(
                "/v1/messages", json={**body, "stream": stream}, headers={"anthropic-beta": beta}
            )
            assert resp.status_code == 200 and resp.headers["x-coe-ignored-beta"] == beta


def test_count_tokens_routes_like_messages_without_generating(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    with app_client(path) as http:
        client = anthropic.Anthropic(
            base_url="http://testserver", api_key="x", http_client=http, max_retries=0
        )
        counted = client.messages.with_raw_response.count_tokens(
            model="coe/category/to_ok", system="Be brief.", messages=USER, tools=[TOOL]
        )
        assert counted.parse().input_tokens > 0
        assert counted.headers["x-coe-expert"] == "ok"
        assert counted.headers["x-coe-token-count"] == "estimate"  # a stub has no tokenizer
        assert states["ok"].paths == ["/apply-template"]  # asked for its template, nothing generated
        with pytest.raises(anthropic.BadRequestError, match="thinking"):  # refused as /v1/messages would
            client.messages.count_tokens(model="coe/expert/ok", messages=USER, thinking={"type": "enabled"})


def test_an_unexpected_failure_is_anthropics_500_without_details(
    stubs, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from coe.server.apis import count_tokens

    async def broken(*_: Any) -> int:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(count_tokens, "exact_count", broken)
    path, _ = stubs
    with app_client(path) as client:
        resp = client.post("/v1/messages/count_tokens", json={"model": "coe/expert/ok", "messages": USER})
        assert assert_anthropic_error(resp, 500, "api_error") == "internal server error"
        assert "secret" not in resp.text
