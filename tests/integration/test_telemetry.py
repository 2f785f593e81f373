"""OpenTelemetry: `coe serve` with a ``telemetry`` block exports one span per request, a child per
stage, to a real OTLP/HTTP receiver process (tests/support/otlp_receiver.py decodes the protobufs the
exporter sent). Stub experts (a 500 then a good one) make the fallback and the error status certain;
``coe/category/*`` skips the encoder, so no model loads."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coe import load_config
from coe.server import ServerSettings, create_app
from tests.support.otlp_receiver import otlp_receiver
from tests.support.paths import ROOT
from tests.support.stub_server import stub_server

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
USER = [{"role": "user", "content": "hi"}]


def registry(tmp_path: Path, urls: dict[str, str], telemetry: str) -> Path:
    lines = ["version: 1", "experts:"]
    lines += [f"  {name}: {{endpoint: '{url}', retries: 0}}" for name, url in urls.items()]
    lines += [
        "router:",
        "  categories:",
        "    broken: {expert: bad, examples: ['about bad']}",
        "    fine: {expert: ok, examples: ['about ok']}",
        "  fallback: {expert: ok, min_confidence: 0.1}",
        telemetry,
    ]
    path = tmp_path / "experts.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Any]]:
    with ExitStack() as stack:
        endpoint, spans = stack.enter_context(otlp_receiver())
        ok, _ = stack.enter_context(stub_server("ok", text="fine"))
        bad, _ = stack.enter_context(stub_server("500"))
        block = f"telemetry: {{otlp_endpoint: '{endpoint}', service_name: coe-test}}"
        app = create_app(
            load_config(registry(tmp_path, {"ok": ok, "bad": bad}, block)), ServerSettings(warm=False)
        )
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        yield client, lambda: _exported(app, spans)


def _exported(app: Any, spans: Any) -> list[dict[str, Any]]:
    assert app.state.telemetry.flush()
    deadline = time.monotonic() + 10
    while not (got := spans()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(got)


def by_trace(spans: list[dict[str, Any]], trace_id: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans if s["trace_id"] == trace_id}


@pytest.mark.parametrize("stream", [False, True])
def test_request_span_is_a_child_of_the_callers_traceparent(served, stream: bool) -> None:  # type: ignore[no-untyped-def]
    client, exported = served
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    body = {"model": "coe/category/broken", "messages": USER, "stream": stream}
    resp = client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200 and resp.headers["x-coe-expert"] == "ok"
    spans = by_trace(exported(), CALLER_TRACE)
    root = spans["chat coe/category/broken"]
    assert root["parent_span_id"] == CALLER_SPAN and root["kind"] == 2  # SERVER
    assert root["resource"]["service.name"] == "coe-test"
    a = root["attributes"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "coe/category/broken"
    assert a["gen_ai.response.model"] == "coe/expert/ok"
    words = 1 if stream else 2  # the stub streams "fine" as one word; its whole reply counts 2
    assert a["gen_ai.usage.input_tokens"] == 3 and a["gen_ai.usage.output_tokens"] == words
    assert a["coe.router"] == "category-pinned" and a["coe.category"] == "broken"
    assert a["coe.confidence"] == 1.0 and a["coe.expert"] == "ok" and a["coe.fallback"] is True
    assert a["http.response.status_code"] == 200 and a["coe.stream"] is stream
    if not stream:
        assert a["gen_ai.response.id"] == resp.json()["id"]
    # One child per stage, all under the request span, inside its time.
    expected = {"coe.route", "chat bad", "chat ok"} | ({"coe.aggregate"} if not stream else set())
    assert expected <= set(spans) - {root["name"]}
    for name in expected:
        child = spans[name]
        assert child["parent_span_id"] == root["span_id"], name
        assert root["start_ns"] <= child["start_ns"] <= child["end_ns"] <= root["end_ns"], name
    bad, good = spans["chat bad"], spans["chat ok"]
    assert bad["status"] == 2 and "500" in bad["attributes"]["error.type"]  # STATUS_CODE_ERROR
    assert bad["kind"] == 3 and bad["attributes"]["coe.attempt"] == 1  # CLIENT, the first attempt
    assert (
        good["attributes"]["coe.attempt.ok"] is True
        and good["attributes"]["gen_ai.usage.output_tokens"] == words
    )
    assert bad["end_ns"] <= good["start_ns"]  # tried in turn: the fallback after the failure
    assert spans["coe.route"]["attributes"]["coe.category"] == "broken"


def test_without_traceparent_the_request_span_is_a_root_and_failures_are_errors(served) -> None:  # type: ignore[no-untyped-def]
    client, exported = served
    resp = client.post("/v1/chat/completions", json={"model": "coe/expert/bad", "messages": USER})
    assert resp.status_code == 503
    [root] = [s for s in exported() if s["name"] == "chat coe/expert/bad"]
    assert root["parent_span_id"] == "" and root["status"] == 2
    assert root["attributes"]["http.response.status_code"] == 503
    assert "bad" in root["attributes"]["error.type"]
    children = [s for s in exported() if s["parent_span_id"] == root["span_id"]]
    assert [c["name"] for c in children if c["name"].startswith("chat ")] == ["chat bad"]


def test_telemetry_is_off_and_not_imported_without_the_block(tmp_path: Path) -> None:
    """The SDK and the exporter stay unloaded (FastAPI itself imports the opentelemetry API package
    where it is installed: fastapi.telemetry, a no-op without a global tracer provider, which CoE
    never sets)."""
    with stub_server("ok") as (url, _):
        path = registry(tmp_path, {"ok": url, "bad": url}, "")
        code = (
            "import sys; from coe import load_config; from coe.server import ServerSettings, create_app;"
            "from fastapi.testclient import TestClient;"
            f"app = create_app(load_config({str(path)!r}), ServerSettings(warm=False));"
            "c = TestClient(app); r = c.post('/v1/chat/completions', json={'model': 'coe/expert/ok',"
            " 'messages': [{'role': 'user', 'content': 'hi'}]}); assert r.status_code == 200, r.text;"
            "assert app.state.telemetry is None;"
            "ours = ('opentelemetry.sdk', 'opentelemetry.exporter');"
            "loaded = [m for m in sys.modules if m.startswith(ours)];"
            "print(sorted(loaded))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_wrong_telemetry_key_names_its_path(tmp_path: Path) -> None:
    from coe.errors import ConfigError

    path = registry(
        tmp_path, {"ok": "http://127.0.0.1:9/v1", "bad": "http://127.0.0.1:9/v1"}, "telemetry: {endpoint: x}"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "telemetry.endpoint: unknown key 'endpoint'" in str(info.value)
    assert "otlp_endpoint" in str(info.value)


def test_a_blocked_request_has_its_signals_span(tmp_path: Path) -> None:
    """The PII check (offline pattern recognizers) blocks before routing: the request span says
    which signal blocked it, and its one stage is ``coe.signals`` with the verdict."""
    with otlp_receiver() as (endpoint, spans), stub_server("ok") as (url, state):
        blocks = f"telemetry: {{otlp_endpoint: '{endpoint}'}}\nsignals:\n  pii: {{action: block}}"
        app = create_app(
            load_config(registry(tmp_path, {"ok": url, "bad": url}, blocks)), ServerSettings(warm=False)
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            messages = [{"role": "user", "content": "mail alice@example.com the report"}]
            resp = client.post("/v1/chat/completions", json={"model": "coe", "messages": messages})
            assert resp.status_code == 400 and state.calls == 0
            got = _exported(app, spans)
    [root] = [s for s in got if s["name"] == "chat coe"]
    assert root["attributes"]["coe.signals.blocked_by"] == "pii" and root["status"] == 2
    children = {s["name"]: s for s in got if s["parent_span_id"] == root["span_id"]}
    assert set(children) == {"coe.signals"}
    assert children["coe.signals"]["attributes"]["coe.signals.verdicts"] == ["pii pii: block"]
