"""Signals behind the real FastAPI app with a capturing stub expert (tests/support/stub_server.py):
what the expert was sent (redacted, never the value), a block that calls no expert, and the block in
each API's own error shape (OpenAI Chat Completions and Responses, Anthropic Messages)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coe import load_config
from coe.server import ServerSettings, create_app
from tests.support.guard import BLOCKED_PROMPT, train_small_guard
from tests.support.stub_server import StubState, stub_server


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_guard(tmp_path_factory.mktemp("guard") / "guard.npz")


@pytest.fixture
def client(tmp_path: Path, guard: Path) -> Iterator[tuple[TestClient, StubState]]:
    with stub_server("ok", "stub answer") as (url, state):
        (tmp_path / "experts.yaml").write_text(
            "version: 1\nembedder: {backend: onnx-int8}\n"
            f"experts:\n  ok: {{endpoint: '{url}', retries: 0}}\n"
            "router:\n  categories:\n    any: {expert: ok, examples: ['anything']}\n"
            f"signals:\n  guard: {{model: '{guard}', threshold: 0.9}}\n"
            "  pii: {action: redact}\n"
        )
        app = create_app(load_config(tmp_path / "experts.yaml"), ServerSettings(warm=False))
        yield TestClient(app, raise_server_exceptions=False), state


def test_the_expert_gets_the_redacted_prompt_and_never_the_value(client) -> None:  # type: ignore[no-untyped-def]
    http, stub = client
    text = "Please email alice@example.com and call 212-555-0187 about card 4111 1111 1111 1111."
    resp = http.post(
        "/v1/chat/completions", json={"model": "coe", "messages": [{"role": "user", "content": text}]}
    )
    assert resp.status_code == 200, resp.text
    sent = stub.bodies[-1]["messages"][-1]["content"]
    assert sent == "Please email <EMAIL_ADDRESS> and call <PHONE_NUMBER> about card <CREDIT_CARD>."
    assert resp.json()["choices"][0]["message"]["content"] == "stub answer"  # not un-redacted


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "coe", "messages": [{"role": "user", "content": BLOCKED_PROMPT}]}),
        ("/v1/responses", {"model": "coe", "input": BLOCKED_PROMPT}),
        (
            "/v1/messages",
            {"model": "coe", "max_tokens": 16, "messages": [{"role": "user", "content": BLOCKED_PROMPT}]},
        ),
    ],
)
def test_a_block_is_a_400_in_the_api_shape_and_calls_no_expert(client, path: str, body: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    http, stub = client
    resp = http.post(path, json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    if path == "/v1/messages":
        assert resp.json()["type"] == "error" and error["type"] == "invalid_request_error"
        assert "content_policy" in error["message"]  # Anthropic errors have no code field
    else:
        assert error["code"] == "content_policy" and error["type"] == "invalid_request_error"
    assert stub.calls == 0


def test_a_streamed_request_is_blocked_before_the_stream_starts(client) -> None:  # type: ignore[no-untyped-def]
    http, stub = client
    body = {"model": "coe", "stream": True, "messages": [{"role": "user", "content": BLOCKED_PROMPT}]}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_policy"
    assert stub.calls == 0


def test_a_stored_response_keeps_the_redacted_turns_never_the_value(tmp_path: Path) -> None:
    with stub_server("ok", "noted") as (url, state):
        (tmp_path / "experts.yaml").write_text(
            "version: 1\nembedder: {backend: onnx-int8}\n"
            f"experts:\n  ok: {{endpoint: '{url}', retries: 0}}\n"
            "router:\n  sessions: {enabled: true}\n"
            "  categories:\n    any: {expert: ok, examples: ['anything']}\n"
            "signals:\n  pii: {action: redact}\n"
        )
        app = create_app(load_config(tmp_path / "experts.yaml"), ServerSettings(warm=False))
        with TestClient(app, raise_server_exceptions=False) as http:
            resp = http.post("/v1/responses", json={"model": "coe", "input": "Reach me at ann@example.com."})
            assert resp.status_code == 200, resp.text
            stored = asyncio.run(app.state.coe.sessions.recall_response(resp.json()["id"]))
    assert stored is not None and "ann@example.com" not in str(stored.messages)
    assert stored.messages[0]["content"] == "Reach me at <EMAIL_ADDRESS>."
    assert state.bodies[-1]["messages"][-1]["content"] == "Reach me at <EMAIL_ADDRESS>."


def test_the_server_loads_the_guard_at_start_up(tmp_path: Path, guard: Path) -> None:
    import time

    with stub_server("ok") as (url, _):
        (tmp_path / "experts.yaml").write_text(
            "version: 1\nembedder: {backend: onnx-int8}\n"
            f"experts:\n  ok: {{endpoint: '{url}', retries: 0}}\n"
            "router:\n  categories:\n    any: {expert: ok, examples: ['anything']}\n"
            f"signals:\n  guard: {{model: '{guard}'}}\n"
        )
        app = create_app(load_config(tmp_path / "experts.yaml"), ServerSettings(warm=True))
        with TestClient(app, raise_server_exceptions=False):
            deadline = time.monotonic() + 60
            while app.state.coe.signals._guard is None:
                assert time.monotonic() < deadline, "the guard was not loaded at start-up"
                time.sleep(0.05)
