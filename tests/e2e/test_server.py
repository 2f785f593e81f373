"""`coe serve` end to end: the official `openai` client against a real uvicorn server whose experts
are real llama.cpp processes (the default experts.yaml), started by the server and stopped with it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from coe.server import ServerSettings, create_app
from tests.support.procs import llama_server_pids, wait_gone
from tests.support.server_thread import ServerThread
from tests.support.streams import StreamReader

pytestmark = pytest.mark.e2e
SHORT = {"max_tokens": 24, "temperature": 0.0}


@pytest.fixture(scope="module")
def server(default_config) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    app = create_app(default_config, ServerSettings(max_tokens_limit=256))
    running = ServerThread(app)
    running.start()
    deadline = time.monotonic() + 180
    while httpx.get(running.url + "/readyz", timeout=5).status_code != 200:  # warm-up starts the experts
        assert time.monotonic() < deadline, httpx.get(running.url + "/readyz").text
        time.sleep(0.25)
    running.pids = set(app.state.coe.pool.running.values())  # type: ignore[attr-defined]
    yield running
    running.stop()
    assert not wait_gone(running.pids)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_readyz_and_models(server: ServerThread, client: openai.OpenAI) -> None:
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    assert len(server.pids) == 2 and server.pids <= llama_server_pids()  # type: ignore[attr-defined]
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "coe",
        "coe/expert/coder",
        "coe/expert/general",
        "coe/category/code",
        "coe/category/math",
        "coe/category/general",
        "coe/embedder",  # /v1/embeddings
    ]


def test_routed_completion_names_the_expert(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a Python function that reverses a string"}],
        extra_body={"coe": {"trace": True}},
        **SHORT,
    )
    completion = raw.parse()
    assert raw.headers["x-coe-expert"] == "coder" and raw.headers["x-coe-category"] == "code"
    assert float(raw.headers["x-coe-confidence"]) > 0.45
    assert completion.model == "coe/expert/coder"
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 24
    trace = completion.model_extra["coe"]
    assert trace["decision"]["category"] == "code" and trace["attempts"][0]["ok"]
    assert {"route", "expert:coder", "total"} <= set(trace["timings_ms"])


def test_no_trace_unless_asked(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="coe/expert/general", messages=[{"role": "user", "content": "Say hello"}], **SHORT
    )
    assert completion.model == "coe/expert/general" and "coe" not in (completion.model_extra or {})


def test_streaming_with_the_openai_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="coe",
        messages=[{"role": "user", "content": "Tell me a short story about a fox"}],
        stream=True,
        stream_options={"include_usage": True},
        **SHORT,
    )
    text, models, usage = [], set(), None
    for chunk in stream:
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert models == {"coe/expert/general"}
    assert "".join(text).strip()
    assert usage is not None and usage.completion_tokens > 0


def test_category_model_routes_to_its_expert(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="coe/category/math", messages=[{"role": "user", "content": "Tell me a joke"}], **SHORT
    )
    assert raw.headers["x-coe-expert"] == "coder" and raw.headers["x-coe-category"] == "math"
    assert raw.parse().model == "coe/expert/coder"


def test_invalid_requests_raise_the_usual_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(
            model="coe", messages=[{"role": "user", "content": "hi"}], max_tokens=100_000
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="coe", messages=[])


def test_metrics_count_tokens_and_decisions(server: ServerThread) -> None:
    text = httpx.get(server.url + "/metrics").text
    assert 'coe_tokens_total{expert="coder",kind="completion"}' in text
    assert 'coe_decisions_total{category="code"}' in text
    assert 'coe_stage_latency_seconds_count{stage="route"}' in text
    assert 'coe_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    # Warm-up loaded each expert once; nothing was swapped since (no budget: no evictions).
    assert 'coe_pool_loads_total{expert="coder"} 1.0' in text
    assert 'coe_pool_loads_total{expert="general"} 1.0' in text
    assert "coe_pool_evictions_total{" not in text


def test_dashboard_api_shows_real_experts_and_a_routed_decision(
    server: ServerThread, client: openai.OpenAI
) -> None:
    """The dashboard's JSON (GET /ui/api/*) over the real llama-server experts: both managed
    processes ready, the routed request's category and its real stage timings (the browser test
    with stub experts: tests/integration/test_dashboard.py)."""
    completion = client.chat.completions.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers"}],
        **SHORT,
    )
    summary = httpx.get(server.url + "/ui/api/summary").json()
    experts = {e["name"]: e for e in summary["experts"]}
    assert {n: (e["state"], e["pool_state"]) for n, e in experts.items()} == {
        "coder": ("ready", "ready"),
        "general": ("ready", "ready"),
    }
    assert summary["categories"].get("code", 0) >= 1 and experts["coder"]["answered"] >= 1
    assert summary["latency_ms"]["route"]["count"] >= 1 and summary["latency_ms"]["expert"]["p50_ms"] > 0
    [row] = [r for r in httpx.get(server.url + "/ui/api/recent").json()["data"] if r["id"] == completion.id]
    assert row["category"] == "code" and row["expert"] == "coder" and row["router"] == "category"
    trace = httpx.get(f"{server.url}/ui/api/trace/{completion.id}").json()["trace"]
    assert trace["attempts"][0]["expert"] == "coder" and trace["timings_ms"]["expert:coder"] > 0


def test_graceful_shutdown_finishes_in_flight_then_stops_experts(server: ServerThread) -> None:
    """Runs last: a stream in flight when shutdown starts still runs to its ``[DONE]``, then the
    experts stop. (A real SIGTERM to a `coe serve` process: tests/e2e/test_serve_cli.py.)"""
    reader = StreamReader(server.url)
    reader.start()
    deadline = time.monotonic() + 30
    while "coe_inflight_requests 2.0" not in httpx.get(server.url + "/metrics").text:  # this one + the stream
        assert time.monotonic() < deadline and reader.is_alive(), "the stream never started"
        time.sleep(0.02)
    server.stop()
    reader.join(timeout=120)
    reader.complete_text()
    assert not wait_gone(server.pids)  # type: ignore[attr-defined]
