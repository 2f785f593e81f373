"""The trace store behind `coe serve`: the official openai SDK over HTTP against a real uvicorn
server with a real llama.cpp expert (SmolLM2); each answered request's response id is a record in
the real SQLite store, feedback on it is stored, and a broken store never fails a request."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from coe.config import load_config
from coe.server import ServerSettings, create_app
from coe.traces import TraceStore
from tests.e2e.test_server import ServerThread
from tests.support.procs import wait_gone
from tests.support.registries import SMOLLM

pytestmark = pytest.mark.e2e
KEY = "test-key"
SHORT = {"max_tokens": 8, "temperature": 0.0}


def registry(folder: Path, traces: str) -> Path:
    text = f"""\
        version: 1
        experts:
          reader:
            model: smollm2-135m-instruct
            serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 1024, parallel: 1, threads: 1}}
            params: {{temperature: 0.0, max_tokens: 8}}
            params_b: 0.135
        router:
          categories:
            code: {{expert: reader, examples: ["Write a Python function", "Fix this bug in my code"]}}
            chat: {{expert: reader, examples: ["Tell me a joke", "Write a poem about the sea"]}}
        traces: {traces}
        """
    path = folder / "experts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def serve(path: Path) -> ServerThread:
    app = create_app(load_config(path), ServerSettings(api_keys=frozenset({KEY}), max_tokens_limit=64))
    running = ServerThread(app)
    running.app = app  # type: ignore[attr-defined]
    running.start()
    deadline = time.monotonic() + 180
    while httpx.get(running.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, httpx.get(running.url + "/readyz").text
        time.sleep(0.25)
    return running


def stop(running: ServerThread) -> None:
    pids = set(running.app.state.coe.pool.running.values())  # type: ignore[attr-defined]
    running.stop()
    assert not wait_gone(pids)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[ServerThread]:
    running = serve(registry(folder, f"{{path: {folder / 'traces.db'}, store_text: true}}"))
    yield running
    stop(running)


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def stored(server: ServerThread, folder: Path, rid: str):  # type: ignore[no-untyped-def]
    assert server.app.state.recorder.writer.flush()  # type: ignore[attr-defined]
    store = TraceStore(folder / "traces.db")
    try:
        return store.get(rid), store.feedback(rid)
    finally:
        store.close()


def test_a_chat_completion_is_recorded_under_its_response_id(
    server: ServerThread, client: openai.OpenAI, folder: Path
) -> None:
    completion = client.chat.completions.create(
        model="coe",
        messages=[{"role": "user", "content": "Write a Python function that adds two numbers"}],
        **SHORT,
    )
    record, _ = stored(server, folder, completion.id)
    assert completion.id.startswith("chatcmpl-") and record is not None
    assert record.expert == "reader" and record.api == "chat" and record.model == "coe"
    assert record.decision is not None and record.decision.category == "code"
    assert record.decision.candidates[0] == "reader" and record.attempts[0].ok
    assert record.completion_tokens == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert {"route", "expert:reader", "total"} <= set(record.timings_ms)
    assert record.cost is not None and record.cost_unit == "params_b_x_mtok"
    assert record.prompt == [{"role": "user", "content": "Write a Python function that adds two numbers"}]
    assert record.answer == completion.choices[0].message.content
    assert len(record.prompt_sha256) == 64 and record.cache is None and record.guard is None


def test_streams_and_the_responses_api_are_recorded_too(
    server: ServerThread, client: openai.OpenAI, folder: Path
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="coe", messages=[{"role": "user", "content": "Tell me a joke"}], stream=True, **SHORT
        )
    )
    record, _ = stored(server, folder, chunks[0].id)
    assert record is not None and record.answer == "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )
    response = client.responses.create(model="coe/expert/reader", input="Say hi", max_output_tokens=8)
    record, _ = stored(server, folder, response.id)
    assert response.id.startswith("resp_") and record is not None and record.api == "responses"
    assert record.model == "coe/expert/reader" and record.decision is not None
    assert record.decision.router == "pinned"


def test_feedback_on_a_response_is_stored(server: ServerThread, client: openai.OpenAI, folder: Path) -> None:
    completion = client.chat.completions.create(
        model="coe", messages=[{"role": "user", "content": "Write a poem about the sea"}], **SHORT
    )
    auth = {"authorization": f"Bearer {KEY}"}
    ok = httpx.post(
        server.url + "/v1/feedback", json={"id": completion.id, "score": 0.75, "label": "nice"}, headers=auth
    )
    assert ok.status_code == 200 and ok.json()["score"] == 0.75
    thumbs = httpx.post(
        server.url + "/v1/feedback", json={"id": completion.id, "thumbs": "down"}, headers=auth
    )
    assert thumbs.status_code == 200
    _, feedback = stored(server, folder, completion.id)
    assert [(f.score, f.label) for f in feedback] == [(0.75, "nice"), (0.0, None)]


def test_feedback_errors_name_the_problem_in_openais_shape(server: ServerThread) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    unknown = httpx.post(server.url + "/v1/feedback", json={"id": "chatcmpl-nope", "score": 1}, headers=auth)
    assert unknown.status_code == 404
    assert "chatcmpl-nope" in unknown.json()["error"]["message"] and unknown.json()["error"]["param"] == "id"
    outside = httpx.post(
        server.url + "/v1/feedback", json={"id": "chatcmpl-nope", "score": 1.5}, headers=auth
    )
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "score"
    both = httpx.post(server.url + "/v1/feedback", json={"id": "x", "score": 1, "thumbs": "up"}, headers=auth)
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]
    anonymous = httpx.post(server.url + "/v1/feedback", json={"id": "x", "score": 1})
    assert anonymous.status_code == 401


def test_an_unwritable_store_still_answers_and_counts(folder: Path) -> None:
    blocker = folder / "not-a-folder"
    blocker.write_text("x")
    sub = folder / "broken"
    sub.mkdir()
    running = serve(registry(sub, f"{{path: {blocker / 'traces.db'}}}"))
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        completion = client.chat.completions.create(
            model="coe", messages=[{"role": "user", "content": "Tell me a joke"}], **SHORT
        )
        assert completion.choices[0].message.content is not None
        running.app.state.recorder.writer.flush()  # type: ignore[attr-defined]
        metrics = httpx.get(running.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
        assert 'coe_trace_records_dropped_total{reason="write_error"} 1.0' in metrics
    finally:
        stop(running)


def test_the_judge_grades_stored_answers_with_a_real_expert(server: ServerThread, folder: Path) -> None:
    """`coe judge` on the store the server wrote: each stored answer is put to the judge once; a
    135M judge rarely writes a rating, so what it must do is count, and store what parses."""
    import json

    from typer.testing import CliRunner

    from coe.cli import app

    assert server.app.state.recorder.writer.flush()  # type: ignore[attr-defined]
    store = TraceStore(folder / "traces.db")
    answered = [r for r in store.records() if r.answer]
    store.close()
    result = CliRunner().invoke(
        app,
        [
            "judge",
            str(folder / "traces.db"),
            "--judge",
            "reader",
            "-c",
            str(folder / "experts.yaml"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["graded"] + report["unparsed"] + report["failed"] == len(answered) > 0
    store = TraceStore(folder / "traces.db")
    judged = [f for f in store.feedback() if f.source == "judge:reader"]
    store.close()
    assert len(judged) == report["graded"] and all(0 <= f.score <= 1 for f in judged)
