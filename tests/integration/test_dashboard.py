"""The dashboard (GET /ui) in a real headless browser: Debian's chromium driven by Playwright, against
a real uvicorn `coe serve` app whose experts are stub servers (tests/support/stub_server.py: one can be
killed on cue, which a real model cannot be told to do cheaply), and the JSON endpoints it reads.

Playwright never downloads a browser here: it launches the OS's chromium (the Makefile's set-up
installs it), so in `make test` this never skips."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from coe import load_config
from coe.server import ServerSettings, create_app
from tests.support.server_thread import ServerThread
from tests.support.stub_server import stub_server

KEY = "ui-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USER = [{"role": "user", "content": "hi"}]


def registry(tmp_path: Path, urls: dict[str, str], extra: str = "") -> Path:
    lines = ["version: 1", "experts:"]
    lines += [f"  {name}: {{endpoint: '{url}', retries: 0}}" for name, url in urls.items()]
    lines += ["router:", "  categories:"]
    lines += [f"    to_{name}: {{expert: {name}, examples: ['about {name}']}}" for name in urls]
    lines += ["  fallback: {expert: ok, min_confidence: 0.1}", extra]
    path = tmp_path / "experts.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------- the JSON endpoints


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with ExitStack() as stack:
        ok, _ = stack.enter_context(stub_server("ok", text="fine"))
        bad, _ = stack.enter_context(stub_server("500"))
        settings = ServerSettings(warm=False, api_keys=frozenset({KEY}))
        app = create_app(load_config(registry(tmp_path, {"ok": ok, "bad": bad})), settings)
        yield stack.enter_context(TestClient(app, raise_server_exceptions=False))


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_summary_recent_and_trace_describe_the_requests(api: TestClient) -> None:
    for model in ("coe/category/to_ok", "coe/category/to_bad", "coe/expert/bad"):
        api.post("/v1/chat/completions", json={"model": model, "messages": USER}, headers=AUTH)
    s = api.get("/ui/api/summary", headers=AUTH).json()
    assert s["requests"]["total"] == 3 and s["requests"]["failed"] == 1
    assert s["categories"] == {"to_ok": 1, "to_bad": 1, "none": 1}  # a pinned expert: no category
    assert s["fallbacks"] == 1  # to_bad answered by ok
    experts = {e["name"]: e for e in s["experts"]}
    assert experts["ok"]["state"] == experts["bad"]["state"] == "ready"  # both endpoints answer /health
    assert experts["bad"]["attempts"] == 2 and experts["bad"]["error_rate"] == 1.0
    assert experts["ok"]["answered"] == 2 and experts["ok"]["errors"] == 0
    assert {"route", "expert", "aggregate", "total"} <= set(s["latency_ms"])
    assert s["latency_ms"]["expert"]["count"] == 4  # ok twice, bad twice
    rows = api.get("/ui/api/recent", headers=AUTH).json()["data"]
    assert [r["model"] for r in rows] == ["coe/expert/bad", "coe/category/to_bad", "coe/category/to_ok"]
    assert rows[0]["status"] == 503 and rows[0]["expert"] is None and rows[0]["id"].startswith("req_")
    assert rows[1]["fallback"] is True and rows[1]["id"].startswith("chatcmpl-")
    detail = api.get(f"/ui/api/trace/{rows[1]['id']}", headers=AUTH).json()
    assert [a["expert"] for a in detail["trace"]["attempts"]] == ["bad", "ok"]
    assert detail["trace"]["decision"]["category"] == "to_bad"
    # Feedback lands in the trace store (on by default for a server) and shows per expert and category.
    graded = api.post("/v1/feedback", json={"id": rows[1]["id"], "score": 0.25}, headers=AUTH)
    assert graded.status_code == 200, graded.text
    feedback = api.get("/ui/api/summary", headers=AUTH).json()["feedback"]
    assert feedback["store"] is True
    assert feedback["experts"] == {"ok": {"mean": 0.25, "count": 1}}
    assert feedback["categories"] == {"to_bad": {"mean": 0.25, "count": 1}}
    failed = api.get(f"/ui/api/trace/{rows[0]['id']}", headers=AUTH).json()
    assert failed["error"] and [a["ok"] for a in failed["trace"]["attempts"]] == [False]
    streamed = {"model": "coe/category/to_ok", "messages": USER, "stream": True}
    assert api.post("/v1/chat/completions", json=streamed, headers=AUTH).status_code == 200
    [row] = api.get("/ui/api/recent?limit=1", headers=AUTH).json()["data"]
    assert row["stream"] is True and row["id"].startswith("chatcmpl-") and row["expert"] == "ok"
    assert row["completion_tokens"] == 1  # the stream's final usage, once the body was sent
    missing = api.get("/ui/api/trace/chatcmpl-nope", headers=AUTH)
    assert missing.status_code == 404 and "chatcmpl-nope" in missing.json()["error"]["message"]


def test_ui_needs_the_key_and_a_key_once_sets_an_httponly_cookie(api: TestClient) -> None:
    for path in ("/ui", "/ui/api/summary", "/ui/api/recent", "/ui/static/app.js"):
        assert api.get(path).status_code == 401, path
    assert api.get("/ui?key=wrong").status_code == 401
    resp = api.get(f"/ui?key={KEY}", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui"  # the key leaves the URL
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert KEY not in cookie  # a random session token, never the key
    page = api.get("/ui")  # the client keeps the cookie
    assert page.status_code == 200 and "<title>CoE dashboard</title>" in page.text
    assert api.get("/ui/api/summary").status_code == 200
    metrics = api.get("/metrics", headers=AUTH).text  # the page's polling is counted under its own paths
    assert 'coe_requests_total{endpoint="/ui/api/summary",status="200"} 1.0' in metrics
    assert api.get("/ui/static/app.js").headers["content-type"].startswith("text/javascript")
    api.cookies.clear()
    assert api.get("/ui/api/summary").status_code == 401
    assert api.get("/ui/static/../app.py", headers=AUTH).status_code == 404


def test_a_blocked_request_shows_its_signal_verdict(tmp_path: Path) -> None:
    """The guard / PII panel: a request blocked by the PII check (Presidio's pattern recognizers,
    offline) counts under its verdict, and its row opens with the signals trace."""
    with stub_server("ok") as (url, state):
        path = registry(tmp_path, {"ok": url}, "signals:\n  pii: {action: block}")
        app = create_app(load_config(path), ServerSettings(warm=False))
        with TestClient(app, raise_server_exceptions=False) as api:
            text = "mail alice@example.com the report"
            resp = api.post(
                "/v1/chat/completions", json={"model": "coe", "messages": [{"role": "user", "content": text}]}
            )
            assert resp.status_code == 400 and state.calls == 0
            assert api.get("/ui/api/summary").json()["signals"] == {"pii pii: block": 1}
            [row] = api.get("/ui/api/recent").json()["data"]
            assert row["status"] == 400 and row["error"]
            trace = api.get(f"/ui/api/trace/{row['id']}").json()["trace"]
            assert trace["signals"]["blocked_by"] == "pii"


# ------------------------------------------------------------------------------ the browser


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, dict[str, Any]]]:
    with ExitStack() as stack:
        ok, _ = stack.enter_context(stub_server("ok", text="fine"))
        flaky_stack = ExitStack()  # closed by the test: the expert is killed
        flaky, _ = flaky_stack.enter_context(stub_server("ok", text="flaky"))
        stack.callback(flaky_stack.close)
        settings = ServerSettings(warm=False, api_keys=frozenset({KEY}))
        app = create_app(load_config(registry(tmp_path, {"ok": ok, "flaky": flaky})), settings)
        server = ServerThread(app)
        server.start()
        stack.callback(server.stop)
        yield server, {"kill_flaky": flaky_stack.close}


@pytest.fixture
def page() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make venv installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def test_dashboard_shows_requests_a_killed_expert_and_opens_a_trace(served, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, control = served
    page.goto(f"{server.url}/ui?key={KEY}")
    assert page.url == f"{server.url}/ui"  # redirected: the key is not in the address bar
    expect(page.locator("#total")).to_have_text("0")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    models = ["coe/category/to_ok"] * 3 + ["coe/category/to_flaky"] * 2
    for model in models:
        client.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]
    expect(page.locator("#total")).to_have_text(str(len(models)))
    expect(page.locator("#recent tbody tr")).to_have_count(len(models))
    expect(page.locator("#categories tbody")).to_contain_text("to_ok")
    flaky_row = page.locator('#experts tr[data-expert="flaky"]')
    expect(flaky_row.locator(".state")).to_have_text("ready")
    control["kill_flaky"]()
    expect(flaky_row.locator(".state")).to_have_text("down", timeout=15_000)
    expect(page.locator('#experts tr[data-expert="ok"] .state')).to_have_text("ready")
    newest = page.locator("#recent tbody tr").first
    rid = newest.get_attribute("data-id")
    assert rid is not None and rid.startswith("chatcmpl-")
    feedback = httpx.post(
        f"{server.url}/v1/feedback",
        json={"id": rid, "thumbs": "up"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert feedback.status_code == 200, feedback.text
    expect(page.locator("#feedback")).to_contain_text("1.00 (n=1)")  # recomputed on new feedback
    newest.click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(rid)
    expect(page.locator("#detail-body")).to_contain_text('"attempts"')
    expect(page.locator("#detail-body")).to_contain_text('"category": "to_flaky"')
    if shot := os.environ.get("COE_DASHBOARD_SCREENSHOT"):  # docs/dashboard.png is made this way
        page.screenshot(path=shot, full_page=True)
    httpx.get(server.url + "/healthz")  # the server is still up after the browser's polling
    time.sleep(0)


def test_feedback_scores_average_per_expert_and_category(tmp_path: Path) -> None:
    """The panel's numbers from a real trace store: grades joined with the records they grade."""
    from types import SimpleNamespace as NS

    from coe.server.dashboard import feedback_scores
    from coe.traces.record import Feedback, TraceDecision, TraceRecord
    from coe.traces.store import TraceStore

    def record(rid: str, expert: str, category: str | None) -> TraceRecord:
        decision = TraceDecision(router="category", category=category) if category else None
        return TraceRecord(id=rid, time=time.time(), expert=expert, decision=decision, prompt_sha256="0" * 64)

    store = TraceStore(tmp_path / "traces.db")
    store.write([record("a", "coder", "code"), record("b", "coder", "math"), record("c", "general", None)])
    store.write([record("gone", "coder", "code")])
    for rid, score in (("a", 1.0), ("b", 0.0), ("a", 0.5), ("c", 0.25), ("gone", 1.0)):
        assert store.add_feedback(Feedback(id=rid, score=score))
    store._conn().execute("DELETE FROM traces WHERE id = 'gone'")  # trimmed by retention: left out
    table = feedback_scores(NS(store=store))
    assert table["store"] is True
    assert table["experts"] == {"coder": {"mean": 0.5, "count": 3}, "general": {"mean": 0.25, "count": 1}}
    assert table["categories"] == {
        "code": {"mean": 0.75, "count": 2},
        "math": {"mean": 0.0, "count": 1},
        "none": {"mean": 0.25, "count": 1},
    }
    assert feedback_scores(None)["store"] is False


def test_a_refused_request_shows_the_model_asked_and_the_error_code(api: TestClient) -> None:
    unknown_field = {"model": "coe/expert/ok", "messages": USER, "bogus_field": 1}
    assert api.post("/v1/chat/completions", json=unknown_field, headers=AUTH).status_code == 400
    assert (
        api.post(
            "/v1/chat/completions", json={"model": "coe/expert/nope", "messages": USER}, headers=AUTH
        ).status_code
        == 404
    )
    nope, bogus = api.get("/ui/api/recent", headers=AUTH).json()["data"]
    assert (bogus["model"], bogus["status"]) == ("coe/expert/ok", 400) and bogus["code"]
    assert "bogus_field" in bogus["error"]
    assert (nope["model"], nope["status"], nope["code"]) == ("coe/expert/nope", 404, "model_not_found")
