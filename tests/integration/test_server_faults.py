"""`coe serve` without real models: fault-injecting stub experts (tests/stub_server.py) behind the
real FastAPI app, driven in-process. Covers fallback, in-band stream errors, 429, auth, limits, the
OpenAI error shape, and hypothesis fuzzing of the request bodies of every endpoint, the agent fields
(tools, tool calls, content parts, response formats) included: bad input is 4xx, never 5xx.

Models used here are ``coe/expert/*`` and ``coe/category/*``, which skip the router, so no encoder
is loaded and no LLM runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coe import CoE, load_config
from coe.errors import ExpertError
from coe.server import ServerSettings, create_app
from coe.server.settings import is_loopback
from coe.types import RouteDecision, StreamEvent
from tests.support.stub_server import Mode, StubState, stub_server

USER = [{"role": "user", "content": "hi"}]


def make_registry(tmp_path: Path, experts: dict[str, tuple[str, str]]) -> Path:
    """experts: name -> (url, extra yaml flow fields). Categories: one per expert, `to_NAME`, and a
    `broken_then_ok` category whose expert is `bad` with fallback `ok` when both exist."""
    lines = ["version: 1", "experts:"]
    for name, (url, extra) in experts.items():
        lines.append(f"  {name}: {{endpoint: '{url}', retries: 0{', ' + extra if extra else ''}}}")
    lines += ["router:", "  categories:"]
    for name in experts:
        lines.append(f"    to_{name}: {{expert: {name}, examples: ['about {name}']}}")
    if "ok" in experts:
        lines.append("  fallback: {expert: ok, min_confidence: 0.1}")
    path = tmp_path / "experts.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[tuple[Path, dict[str, StubState]]]:
    modes: dict[str, Mode] = {
        "ok": "ok",
        "bad": "500",
        "hang": "hang",
        "drop": "drop-stream",
        "refuse": "drop-before-stream",
    }
    with ExitStack() as stack:
        experts, states = {}, {}
        for name, mode in modes.items():
            url, state = stack.enter_context(stub_server(mode, text=f"answer from {name} stub"))
            experts[name] = (url, "timeout_s: 0.5" if name == "hang" else "")
            states[name] = state
        yield make_registry(tmp_path, experts), states


def client_for(path: Path, **kw: Any) -> TestClient:
    app = create_app(load_config(path), ServerSettings(warm=False, **kw))
    return TestClient(app, raise_server_exceptions=False)


def readyz(client: TestClient) -> httpx.Response:
    """/readyz once the strategy objects are built (it says ``strategies`` while the router loads)."""
    for _ in range(600):
        resp = client.get("/readyz")
        if "strategies" not in resp.json().get("not_ready", {}):
            return resp
    raise AssertionError(f"the router was still being built: {resp.text}")


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text
    return body["error"]


def sse_events(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ----------------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("failing", ["bad", "hang", "refuse"])
@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_first_token_falls_back(stubs, failing: str, stream: bool) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        body = {
            "model": f"coe/category/to_{failing}",
            "messages": USER,
            "stream": stream,
            "coe": {"trace": True},
        }
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-coe-expert"] == "ok"
        assert resp.headers["x-coe-category"] == f"to_{failing}"
        if stream:
            events = sse_events(resp.text)
            assert events[-1] == "[DONE]"
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
            trace = next(e["coe"] for e in events[:-1] if "coe" in e)
        else:
            text = resp.json()["choices"][0]["message"]["content"]
            trace = resp.json()["coe"]
            assert resp.json()["model"] == "coe/expert/ok"
        assert text == "answer from ok stub"
        assert trace["fallback_used"] is True
        assert [a["expert"] for a in trace["attempts"]] == [failing, "ok"]
        metrics = client.get("/metrics").text
        assert f'coe_fallbacks_total{{answered_by="ok",routed_to="{failing}"}} 1.0' in metrics


async def test_a_requests_own_admission_is_entered_around_each_of_its_expert_calls(stubs) -> None:  # type: ignore[no-untyped-def]
    """``aask``/``astream(slot=...)``: what the server hands each request (its per-expert slots);
    the fallback's call is admitted too, and another request's calls are not."""
    path, _ = stubs
    mine: list[str] = []

    def admit(into: list[str]) -> Any:
        def enter(name: str) -> Any:
            into.append(name)
            return nullcontext()

        return enter

    decision = RouteDecision(router="test", experts=["bad", "ok"])
    with CoE(load_config(path)) as coe:
        answer = await coe.aask("hi", decision=decision, slot=admit(mine))
        events = [e async for e in coe.astream("hi", decision=decision, slot=admit(mine))]
        await coe.aask("hi", decision=decision)
    assert answer.expert == "ok" and events[-1].answer is not None and events[-1].answer.expert == "ok"
    assert mine == ["bad", "ok", "bad", "ok"]


def test_drop_after_first_token_ends_stream_with_error_event(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    with client_for(path) as client:
        body = {"model": "coe/category/to_drop", "messages": USER, "stream": True}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200 and resp.headers["x-coe-expert"] == "drop"
        events = sse_events(resp.text)
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert set(error) == {"message", "type", "param", "code"} and "drop" in error["message"]
        deltas = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert "answer" in deltas  # text already sent is not retracted, nor duplicated by a fallback
        assert states["ok"].calls == 0


def test_openai_client_sees_stream_error(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        stream = client.chat.completions.create(model="coe/category/to_drop", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match="drop"):
            for _ in stream:
                pass


def test_all_experts_failing_is_503_in_openai_shape(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        for stream in (False, True):
            body = {"model": "coe/expert/bad", "messages": USER, "stream": stream}
            error = assert_openai_error(client.post("/v1/chat/completions", json=body), 503)
            assert error["code"] == "all_experts_failed" and "HTTP 500" in error["message"]


async def test_full_expert_queue_is_429_with_retry_after(stubs) -> None:  # type: ignore[no-untyped-def]
    path, states = stubs
    app = create_app(load_config(path), ServerSettings(warm=False, max_concurrency=1, max_queue=0))
    transport = httpx.ASGITransport(app=app)
    body = {"model": "coe/expert/hang", "messages": USER}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        for _ in range(1000):  # once the stub has its call, the first request holds the only slot
            if states["hang"].calls:
                break
            await asyncio.sleep(0.01)
        second = await client.post("/v1/chat/completions", json=body)
        error = assert_openai_error(second, 429)
        assert second.headers["retry-after"] == "1" and error["code"] == "expert_busy"
        assert (await first).status_code == 503  # the hanging expert timed out; nothing to fall back to
        assert 'coe_queue_rejections_total{expert="hang"} 1.0' in (await client.get("/metrics")).text
    await app.state.coe.aclose()


# ---------------------------------------------------------------------------- security, limits


def test_bearer_keys(stubs, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    caplog.set_level(logging.DEBUG)
    body = {"model": "coe/expert/ok", "messages": USER}
    with client_for(path, api_keys=frozenset({"sk-good"})) as client:
        assert_openai_error(client.post("/v1/chat/completions", json=body), 401)
        wrong = {"Authorization": "Bearer sk-wrong-secret"}
        assert assert_openai_error(client.get("/v1/models", headers=wrong), 401)["code"] == "invalid_api_key"
        ok = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-good"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # probes need no key
    assert "sk-good" not in caplog.text and "sk-wrong-secret" not in caplog.text


def test_keys_from_env() -> None:
    assert ServerSettings.keys_from_env(" a, b,,") == frozenset({"a", "b"})
    assert ServerSettings.keys_from_env("") == frozenset()


def test_server_block_in_yaml_sets_keys_and_limits_flags_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-from-yaml")
    monkeypatch.setenv("COE_API_KEYS", "sk-from-env")
    path = tmp_path / "experts.yaml"
    path.write_text(
        "experts: {ok: {endpoint: 'http://127.0.0.1:9/v1'}}\n"
        "router: {categories: {c: {expert: ok, examples: [x]}}}\n"
        "server: {api_keys: ['${MY_KEY}'], max_tokens: 32, max_queue: 3}\n"
    )
    cfg = load_config(path).server
    settings = ServerSettings.from_config(cfg, max_queue=None, max_tokens_limit=16)
    assert settings.api_keys == {"sk-from-yaml", "sk-from-env"}
    assert settings.max_queue == 3 and settings.max_tokens_limit == 16  # the flag wins, None is "not given"
    assert "sk-from-yaml" not in repr(cfg)  # SecretStr: never printed with the config


def test_body_size_and_max_tokens_limits(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path, max_body_bytes=2000, max_tokens_limit=64) as client:
        big = {"model": "coe/expert/ok", "messages": [{"role": "user", "content": "x" * 5000}]}
        assert assert_openai_error(client.post("/v1/chat/completions", json=big), 413)["code"]
        body = {"model": "coe/expert/ok", "messages": USER, "max_tokens": 65}
        assert (
            assert_openai_error(client.post("/v1/chat/completions", json=body), 400)["param"] == "max_tokens"
        )
        body["max_tokens"] = 64
        assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_404_405_and_unknown_model_in_openai_shape(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        assert_openai_error(client.get("/v1/nothing"), 404)
        assert_openai_error(client.delete("/v1/chat/completions"), 405)
        assert_openai_error(client.get("/v1/chat/completions"), 405)
        body = {"model": "coe/expert/nobody", "messages": USER}
        assert assert_openai_error(client.post("/v1/chat/completions", json=body), 404)["code"] == (
            "model_not_found"
        )


def test_models_lists_composition_experts_and_categories(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[0] == "coe"
    assert {"coe/expert/ok", "coe/expert/bad", "coe/category/to_ok", "coe/category/to_hang"} <= set(ids)


def test_readyz_names_unreachable_experts(tmp_path: Path) -> None:
    with stub_server("ok") as (url, _):
        path = make_registry(tmp_path, {"ok": (url, ""), "gone": ("http://127.0.0.1:9/v1", "")})
        with client_for(path) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            resp = readyz(client)
            assert resp.status_code == 503 and set(resp.json()["not_ready"]) == {"gone"}


@pytest.mark.parametrize(
    ("budget", "not_ready"),
    [
        (None, {"coder": "cold", "coder2": "cold", "general": "cold"}),  # nothing loaded, no budget
        (1.5, {}),  # each fits alone: loadable on demand, so ready with none loaded
        (
            0.5,  # larger than the whole budget: never loadable
            dict.fromkeys(
                ("coder", "coder2", "general"), "needs 1.00 GB, more than serving.memory_budget_gb (0.5 GB)"
            ),
        ),
    ],
)
def test_readyz_under_a_memory_budget_means_loadable(
    tmp_path: Path, budget: float | None, not_ready: dict[str, str]
) -> None:
    """Three managed experts of 1 GB each, none started (no warm-up)."""
    from tests.support.registries import pool_registry_text

    path = tmp_path / "experts.yaml"
    path.write_text(pool_registry_text(budget))
    with client_for(path) as client:
        resp = readyz(client)
        assert client.app.state.coe.pool.running == {}  # type: ignore[attr-defined]
    if not_ready:
        assert resp.status_code == 503 and resp.json()["not_ready"] == not_ready
    else:
        assert resp.status_code == 200 and resp.json() == {"status": "ready"}


# ------------------------------------------------------------------------------------ exposure


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("no-such-host.invalid", False),  # unresolvable: counted as exposed, the safe side
    ],
)
def test_what_counts_as_a_loopback_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("yaml_host", "flags", "named"),
    [(None, ["--host", "0.0.0.0"], "--host"), ("0.0.0.0", [], "server.host")],
)
def test_coe_serve_refuses_an_open_api_on_a_public_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_host: str | None, flags: list[str], named: str
) -> None:
    from typer.testing import CliRunner

    from coe.cli import app

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    path = make_registry(tmp_path, {"ok": ("http://127.0.0.1:9/v1", "")})
    if yaml_host:
        path.write_text(path.read_text() + f"server: {{host: '{yaml_host}'}}\n")
    with socket.socket() as taken:  # were the refusal gone, uvicorn would fail to bind, not serve on
        taken.bind(("0.0.0.0", 0))
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(app, ["serve", "-c", str(path), "--port", port, "--no-warm", *flags])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "refusing to serve an API without keys on '0.0.0.0'" in message
    assert "server.api_keys" in message and "COE_API_KEYS" in message
    assert f"set {named} to 127.0.0.1" in message and "--allow-unauthenticated" in message


def test_keys_or_the_explicit_flag_lift_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from coe.config import ServerConfig

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    public = ServerConfig(host="0.0.0.0")
    assert ServerSettings.from_config(public).refusal() is not None
    assert ServerSettings.from_config(ServerConfig()).refusal() is None  # loopback: keys optional
    monkeypatch.setenv("COE_API_KEYS", "sk-1")
    assert ServerSettings.from_config(public).refusal() is None
    assert ServerSettings.from_config(public).exposure_warning() is None
    monkeypatch.delenv("COE_API_KEYS")
    allowed = ServerSettings.from_config(public, allow_unauthenticated=True)
    assert allowed.refusal() is None and "without API keys on '0.0.0.0'" in str(allowed.exposure_warning())


def test_an_api_served_open_on_purpose_warns_at_start_up_and_in_readyz(
    stubs, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    caplog.set_level(logging.WARNING, logger="coe.server")
    with client_for(path, host="0.0.0.0", allow_unauthenticated=True) as client:
        assert "serving without API keys on '0.0.0.0'" in caplog.text
        ready = readyz(client).json()
    assert ready["unauthenticated"] is True and "anyone who can reach" in ready["warning"]
    with client_for(path) as client:  # loopback, no keys: the usual local case, nothing to report
        assert "unauthenticated" not in readyz(client).json()


# ------------------------------------------------------------------ failures the engine raises

SECRET = "secret detail at /srv/coe/internal.py line 42"


def _failing_engine(client: TestClient, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """``aask`` and ``astream`` raise ``exc`` before answering (what a bug in the engine looks like)."""
    coe = client.app.state.coe  # type: ignore[attr-defined]

    async def aask(*_: Any, **__: Any) -> Any:
        raise exc

    async def astream(*_: Any, **__: Any) -> Any:
        raise exc
        yield  # an async generator, as astream is

    monkeypatch.setattr(coe, "aask", aask)
    monkeypatch.setattr(coe, "astream", astream)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unexpected_exception_is_a_500_internal_error_without_its_details(
    stubs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    caplog.set_level(logging.ERROR, logger="coe.server")
    with client_for(path) as client:
        _failing_engine(client, monkeypatch, RuntimeError(SECRET))
        body = {"model": "coe/expert/ok", "messages": USER, "stream": stream}
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), 500)
        assert error["code"] == "internal_error" and error["message"] == "internal server error"
        anthropic = client.post("/v1/messages", json={**body, "max_tokens": 8})
        assert anthropic.status_code == 500 and anthropic.json()["error"]["type"] == "api_error"
        for resp in (error, anthropic.text):
            assert SECRET not in str(resp) and "Traceback" not in str(resp)
    assert "RuntimeError" in caplog.text  # the details stay in the server log


def test_an_unexpected_exception_mid_stream_is_an_in_band_error_without_its_details(
    stubs, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        coe = client.app.state.coe  # type: ignore[attr-defined]

        async def astream(*_: Any, **__: Any) -> Any:
            yield StreamEvent(type="delta", text="half an ans")
            raise RuntimeError(SECRET)

        monkeypatch.setattr(coe, "astream", astream)
        body = {"model": "coe/expert/ok", "messages": USER, "stream": True}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200  # the status went out with the first byte
        events = sse_events(resp.text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == "internal server error"
        assert events[-2]["error"]["code"] == "stream_interrupted"
        anthropic = client.post("/v1/messages", json={**body, "max_tokens": 8})
        assert 'event: error\ndata: {"type": "error"' in anthropic.text
        for text in (resp.text, anthropic.text):
            assert SECRET not in text and "Traceback" not in text
        assert 'coe_stream_errors_total{expert="unknown"} 2.0' in client.get("/metrics").text


def test_an_expert_error_is_a_503_expert_failed(stubs, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        _failing_engine(client, monkeypatch, ExpertError("ok", "its reply could not be read"))
        for stream in (False, True):
            body = {"model": "coe/expert/ok", "messages": USER, "stream": stream}
            resp = client.post("/v1/chat/completions", json=body)
            error = assert_openai_error(resp, 503)
            assert error["code"] == "expert_failed" and "its reply could not be read" in error["message"]
            assert resp.headers["retry-after"] == "1"


def _with_registry_text(path: Path, before: str, after: str) -> Path:
    path.write_text(path.read_text().replace(before, after, 1))
    return path


def test_previous_response_id_with_the_session_store_down_is_a_503(stubs) -> None:  # type: ignore[no-untyped-def]
    """A conversation the caller asked to continue cannot be guessed: unlike routing, no fallback."""
    path, states = stubs
    _with_registry_text(path, "router:\n", "router:\n  sessions: {store: sqlite, path: sessions.db}\n")
    (path.parent / "sessions.db").write_bytes(b"not a database " * 200)
    with client_for(path) as client:
        body = {"model": "coe/expert/ok", "input": "and then?", "previous_response_id": "resp_1"}
        error = assert_openai_error(client.post("/v1/responses", json=body), 503)
        assert error["type"] == "api_error" and "session store is unavailable" in error["message"]
        assert states["ok"].calls == 0


def test_feedback_with_traces_off_is_a_404_traces_disabled(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    _with_registry_text(path, "router:\n", "traces: {enabled: false}\nrouter:\n")
    with client_for(path) as client:
        answer = client.post("/v1/chat/completions", json={"model": "coe/expert/ok", "messages": USER})
        grade = {"id": answer.json()["id"], "thumbs": "up"}
        error = assert_openai_error(client.post("/v1/feedback", json=grade), 404)
    assert error["code"] == "traces_disabled"


def test_a_body_without_or_with_a_lying_content_length_cannot_pass_the_limit(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    small = json.dumps({"model": "coe/expert/ok", "messages": USER}).encode()
    big = json.dumps({"model": "coe/expert/ok", "messages": [{"role": "user", "content": "x" * 5000}]})
    with client_for(path, max_body_bytes=2000) as client:
        chunked = client.post("/v1/chat/completions", content=iter([small]))  # no Content-Length
        assert chunked.status_code == 200 and "content-length" not in chunked.request.headers
        halves = iter([big[:2500].encode(), big[2500:].encode()])
        resp = client.post("/v1/chat/completions", content=halves)
        assert "content-length" not in resp.request.headers
        assert assert_openai_error(resp, 413)["code"] == "request_too_large"
        lying = client.post("/v1/chat/completions", content=big.encode(), headers={"content-length": "100"})
        assert lying.request.headers["content-length"] == "100"
        assert assert_openai_error(lying, 413)["code"] == "request_too_large"


# ---------------------------------------------------------------------------------- readiness


def _garbage_router(tmp_path: Path, url: str) -> Path:
    """A registry whose router artefact (router.model) is not one."""
    (tmp_path / "router.npz").write_bytes(b"this is no router artefact " * 40)
    path = tmp_path / "experts.yaml"
    path.write_text(
        f"version: 1\nexperts:\n  ok: {{endpoint: '{url}', retries: 0}}\n"
        "router:\n  model: router.npz\n  categories:\n    c: {expert: ok}\n"
    )
    return path


@pytest.mark.parametrize("warm", [False, True])
def test_a_router_that_cannot_load_is_a_503_naming_it_never_a_500(tmp_path: Path, warm: bool) -> None:
    with stub_server("ok") as (url, state):
        path = _garbage_router(tmp_path, url)
        app = create_app(load_config(path), ServerSettings(warm=warm))
        with TestClient(app, raise_server_exceptions=False) as client:
            ready = readyz(client)
            assert ready.status_code == 503 and set(ready.json()["not_ready"]) == {"router.model"}
            assert ready.json()["status"] == "not ready"
            for stream in (False, True):
                body = {"model": "coe", "messages": USER, "stream": stream}
                error = assert_openai_error(client.post("/v1/chat/completions", json=body), 503)
                assert error["code"] == "not_ready" and "router.model" in error["message"]
            anthropic = client.post("/v1/messages", json={**body, "max_tokens": 8})
            assert anthropic.status_code == 503 and anthropic.json()["type"] == "error"
            assert "router.model" in anthropic.json()["error"]["message"]
            pinned = {"model": "coe/expert/ok", "messages": USER}
            assert client.post("/v1/chat/completions", json=pinned).status_code == 503  # not ready
    assert state.calls == 0


# ------------------------------------------------------------------------------------ fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_url = st.sampled_from(
    ["https://example.com/a.png", "data:image/png;base64,aGk=", "data:image/png;base64,@@", "ftp://x", ""]
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "video"]) | _json},
    optional={
        "text": st.text(max_size=10) | _json,
        "image_url": st.fixed_dictionaries({"url": _url | _json}) | _json,
        "input_audio": st.fixed_dictionaries(
            {"data": st.sampled_from(["aGk=", "@@"]), "format": st.text(max_size=4)}
        ),
        "file": st.fixed_dictionaries({}, optional={"file_data": _url, "file_id": st.text(max_size=5)})
        | _json,
    },
)
_call = st.fixed_dictionaries(
    {"id": st.sampled_from(["call_1", "call_2"]) | _json, "type": st.just("function") | _json},
    optional={
        "function": st.fixed_dictionaries({"name": st.text(max_size=8), "arguments": st.text(max_size=8)})
        | _json
    },
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "bot", ""]) | _json,
        "content": st.text(max_size=30) | st.lists(_part, max_size=3) | _json,
    },
    optional={
        "tool_calls": st.lists(_call, max_size=2) | _json,
        "tool_call_id": st.sampled_from(["call_1", "call_9"]) | _json,
        "name": st.text(max_size=5) | _json,
    },
)
_schema = st.sampled_from([{"type": "object"}, {"type": "objekt"}, {"type": 12}, {}, {"properties": []}])
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "custom"]) | _json},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["get_weather", "bad name", ""]) | _json},
            optional={"parameters": _schema | _json, "description": st.text(max_size=5)},
        )
        | _json
    },
)
_choice = st.sampled_from(
    ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}, {"type": "any"}]
)
_format = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}},
        {"type": "json_schema"},
    ]
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["coe", "coe/expert/ok", "coe/category/to_ok", "gpt-4", "coe/expert/", ""])
        | _json,
        "messages": st.lists(_message, max_size=3) | _json,
        "stream": st.booleans() | _json,
        "max_tokens": st.integers(-5, 10_000) | _json,
        "max_completion_tokens": st.integers(-5, 10_000) | _json,
        "temperature": st.floats(allow_nan=True, allow_infinity=True) | _json,
        "top_p": st.floats() | _json,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3) | _json,
        "n": st.integers(-1, 3),
        "seed": st.integers() | _json,
        "stream_options": _json,
        "coe": _json,
        "tools": st.lists(_tool, max_size=2) | _json,
        "tool_choice": _choice | _json,
        "parallel_tool_calls": st.booleans() | _json,
        "response_format": _format | _json,
        "logprobs": st.booleans() | _json,
        "top_logprobs": st.integers(-1, 30) | _json,
        "logit_bias": st.dictionaries(st.text(max_size=3), st.integers(-200, 200), max_size=2) | _json,
        "presence_penalty": st.floats() | _json,
        "user": _json,
        "metadata": _json,
        "reasoning_effort": st.sampled_from(["low", "max"]) | _json,
        "store": _json,
        "functions": _json,
        "top_k": _json,
    },
)
# The other endpoints: their own fields, shaped and garbled.
_ITEMS = ["message", "function_call", "function_call_output", "reasoning"]
_BLOCKS = ["text", "image", "tool_use", "tool_result", "doc"]
_ANTHROPIC_CHOICES = [{"type": "any"}, {"type": "tool"}, {"type": "tool", "name": "x"}]
_responses_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search"]), "name": st.text(max_size=4), "parameters": _schema}
)
_anthropic_tool = st.fixed_dictionaries({"name": st.text(max_size=4), "input_schema": _schema | _json})
_other = {
    "/v1/responses": st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["coe/expert/ok", "x"]) | _json,
            "input": st.text(max_size=10)
            | st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(_ITEMS)},
                    optional={
                        "role": st.sampled_from(["user", "assistant"]),
                        "content": st.text(max_size=5) | st.lists(_part, max_size=2),
                        "call_id": st.sampled_from(["c1", "c2"]),
                        "name": st.text(max_size=4),
                        "arguments": st.text(max_size=4),
                        "output": st.text(max_size=4) | _json,
                    },
                ),
                max_size=3,
            )
            | _json,
            "instructions": _json,
            "tools": st.lists(_responses_tool, max_size=2)
            | _json,
            "tool_choice": _choice | _json,
            "text": st.fixed_dictionaries({"format": _format | _json}) | _json,
            "stream": st.booleans(),
            "previous_response_id": _json,
            "include": _json,
            "reasoning": _json,
        },
    ),
    "/v1/messages": st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["coe/expert/ok", "x"]) | _json,
            "max_tokens": st.integers(-1, 10_000) | _json,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "assistant", "system"]),
                        "content": st.text(max_size=5)
                        | st.lists(
                            st.fixed_dictionaries(
                                {"type": st.sampled_from(_BLOCKS)},
                                optional={
                                    "text": _json,
                                    "id": st.sampled_from(["t1", "t2"]),
                                    "tool_use_id": st.sampled_from(["t1", "t2"]),
                                    "name": st.text(max_size=4),
                                    "input": _json,
                                    "content": _json,
                                    "source": st.fixed_dictionaries(
                                        {"type": st.sampled_from(["base64", "url", "file"]),
                                         "media_type": st.sampled_from(["image/png", "text/plain"]),
                                         "data": st.sampled_from(["aGk=", "@@"])}
                                    ) | _json,
                                },
                            ),
                            max_size=2,
                        ),
                    }
                ),
                max_size=3,
            )
            | _json,
            "system": _json,
            "tools": st.lists(_anthropic_tool, max_size=2) | _json,
            "tool_choice": st.sampled_from(_ANTHROPIC_CHOICES) | _json,
            "stop_sequences": _json,
            "stream": st.booleans(),
            "thinking": _json,
        },
    ),
    "/v1/completions": st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["coe/expert/ok", "x"]) | _json,
            "prompt": st.text(max_size=10) | st.lists(st.text(max_size=4), max_size=2) | _json,
            "max_tokens": st.integers(-1, 10_000) | _json,
            "logprobs": st.integers(-1, 8) | _json,
            "stream": st.booleans(),
            "echo": _json,
            "suffix": _json,
        },
    ),
    "/v1/embeddings": st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(["coe/embedder", "coe"]) | _json,
            "input": st.text(max_size=10) | st.lists(st.text(max_size=6), max_size=3) | _json,
            "encoding_format": st.sampled_from(["float", "base64", "hex"]) | _json,
            "dimensions": _json,
        },
    ),
}  # fmt: skip


def assert_api_error(resp: httpx.Response, path: str) -> None:
    """The error shape of the API at ``path``: Anthropic's for /v1/messages, else OpenAI's."""
    if path != "/v1/messages":
        assert_openai_error(resp, resp.status_code)
        return
    body = resp.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert "Traceback" not in resp.text


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with stub_server("ok") as (url, _):
        path = make_registry(tmp_path_factory.mktemp("fuzz"), {"ok": (url, "")})
        with client_for(path) as client:
            yield client


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=_body | _json)
def test_fuzzed_bodies_never_cause_5xx(fuzz_client: TestClient, body: Any) -> None:
    resp = fuzz_client.post("/v1/chat/completions", content=json.dumps(body))
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert_openai_error(resp, resp.status_code)


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_bodies_of_every_endpoint_never_cause_5xx(
    fuzz_client: TestClient, data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(sorted(_other)))
    body = data.draw(_other[path] | _json)
    resp = fuzz_client.post(path, content=json.dumps(body))
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert_api_error(resp, path)


@settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_fuzzed_raw_bytes_never_cause_5xx(fuzz_client: TestClient, raw: bytes) -> None:
    for path in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/completions",
        "/v1/embeddings",
    ):
        resp = fuzz_client.post(path, content=raw)
        assert 400 <= resp.status_code < 500, resp.text
        assert_api_error(resp, path)


# The routed model: the router and the encoder see whatever text a well-formed request carries.
_text = st.text(max_size=300) | st.text(alphabet=st.characters(codec="utf-8"), max_size=2000)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_text", ""]), "text": _text | _json}
)
_routed_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]),
        "content": _text | st.lists(_part, max_size=3) | st.none(),
    }
)
_routed = st.fixed_dictionaries(
    {"model": st.just("coe"), "messages": st.lists(_routed_message, max_size=4)},
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(-2, 64),
        "temperature": st.floats(-1, 3),
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3),
        "coe": st.fixed_dictionaries({}, optional={"trace": st.booleans() | _json}) | _json,
    },
)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_routed)
def test_fuzzed_requests_to_the_routed_model_never_cause_5xx(fuzz_client: TestClient, body: Any) -> None:
    """``coe`` runs the category router and its encoder on the prompt: any text a client can send,
    empty, huge, odd unicode, in content parts, is routed or refused with a 4xx, never a 5xx."""
    resp = fuzz_client.post("/v1/chat/completions", content=json.dumps(body))
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert_openai_error(resp, resp.status_code)
    else:  # routed: the router decided (its category is in the headers), and the stub answered
        assert resp.headers["x-coe-category"] == "to_ok" and resp.headers["x-coe-expert"] == "ok"


def test_an_unknown_model_id_suggests_the_nearest_ids(stubs) -> None:  # type: ignore[no-untyped-def]
    path, _ = stubs
    with client_for(path) as client:
        body = {"model": "coe/expert/okk", "messages": USER}
        error = assert_openai_error(client.post("/v1/chat/completions", json=body), 404)
        far = {"model": "gpt-4o", "messages": USER}
        unlike = assert_openai_error(client.post("/v1/chat/completions", json=far), 404)
    assert "did you mean 'coe/expert/ok'" in error["message"]
    assert "did you mean" not in unlike["message"] and "GET /v1/models" in unlike["message"]


# llama-server's answer when a chat template's tool-call parser cannot read what the model wrote
# (seen from SmolLM2 with `tools`): a 500 for that request, not a dead server.
PEG_500 = "The model produced output that does not match the expected peg-native format"


def test_an_expert_500_for_a_tools_request_falls_back_or_is_a_503_naming_it(tmp_path: Path) -> None:
    """A non-forced ``tools`` request whose expert answers that 500: a failed attempt that falls back
    when the decision has another candidate, else a 503 in OpenAI's shape naming the expert and what
    it said; never a bare 500. The tools go to the expert as given (no forced-call schema)."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with (
        stub_server("500", error=PEG_500) as (bad_url, bad),
        stub_server("ok", text="answer from ok stub") as (ok_url, _),
    ):
        path = make_registry(tmp_path, {"bad": (bad_url, ""), "ok": (ok_url, "")})
        with client_for(path) as client:
            for stream in (False, True):
                body = {"messages": USER, "tools": tools, "tool_choice": "auto", "stream": stream}
                fell_back = client.post("/v1/chat/completions", json={**body, "model": "coe/category/to_bad"})
                assert fell_back.status_code == 200, fell_back.text
                assert fell_back.headers["x-coe-expert"] == "ok"
                alone = client.post("/v1/chat/completions", json={**body, "model": "coe/expert/bad"})
                error = assert_openai_error(alone, 503)
                assert error["code"] == "all_experts_failed"
                assert (
                    "bad" in error["message"]
                    and "HTTP 500" in error["message"]
                    and "peg-native" in error["message"]
                )
    assert bad.bodies and all(b["tools"][0]["function"]["name"] == "lookup" for b in bad.bodies)
    assert all("response_format" not in b for b in bad.bodies)
