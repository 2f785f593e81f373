"""One request path: the same requests through ``ask``, ``astream``, batch mode and the server give the
same decisions, signal verdicts (a ``route:`` verdict and the guard's check of retrieved documents
included), retrieval and attempts. Real encoder, real guard, real index; stub experts that capture
what they were sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coe import CoE, load_config
from coe.config import EmbedderConfig
from coe.encoding.embedder import shared_embedder
from coe.retrieval.corpus import read_corpus
from coe.retrieval.index import build_index
from coe.server import ServerSettings, create_app
from coe.types import Trace
from tests.support.guard import BLOCKED_PROMPT, train_small_guard
from tests.support.stub_server import StubState, stub_server

ROUTED = "When is the Zorblax festival held in Quillport?"
TO_B = "Please write to alice@example.com about the Zorblax festival."  # PII: route to b
PROMPTS = [ROUTED, TO_B]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StubState, StubState]]:
    folder = tmp_path_factory.mktemp("one_path")
    guard = train_small_guard(folder / "guard.npz")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "festival", "title": "Zorblax", "text": BLOCKED_PROMPT}) + "\n")
    embedder = shared_embedder(EmbedderConfig(backend="onnx-int8"))
    build_index(read_corpus(corpus).documents, embedder, folder / "idx", source=str(corpus))
    with stub_server("ok", "answer a") as (url_a, a), stub_server("ok", "answer b") as (url_b, b):
        (folder / "experts.yaml").write_text(
            "version: 1\nembedder: {backend: onnx-int8}\n"
            f"experts:\n  a: {{endpoint: '{url_a}', retries: 0}}\n  b: {{endpoint: '{url_b}', retries: 0}}\n"
            "router:\n  categories:\n"
            "    events: {expert: a, examples: ['When is the festival?', 'Where is the parade held?']}\n"
            "    code: {expert: b, examples: ['Write a Python function', 'Fix this bug in my code']}\n"
            "  fallback: {expert: b, min_confidence: 0.0}\n"
            "retrieval: {index: idx, gate: always, top_k: 1}\n"
            f"signals:\n  guard: {{model: '{guard}', threshold: 0.9, action: flag}}\n"
            "  pii: {action: redact, categories: {EMAIL_ADDRESS: {action: route, route: b}}}\n"
        )
        yield folder / "experts.yaml", a, b


def _same(trace: Trace | dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the entry point: no timings, no latencies."""
    t = trace if isinstance(trace, Trace) else Trace.model_validate(trace)
    signals = t.signals.model_dump(exclude={"verdicts"}) if t.signals else None
    verdicts = [v.model_dump(exclude={"latency_ms"}) for v in t.signals.verdicts] if t.signals else []
    retrieval = t.retrieval.model_dump(exclude={"latency_ms"}) if t.retrieval else None
    return {
        "decision": t.decision.model_dump() if t.decision else None,
        "signals": signals,
        "verdicts": verdicts,
        "retrieval": retrieval,
        "capabilities": t.capabilities.model_dump() if t.capabilities else None,
        "attempts": [(a.expert, a.ok) for a in t.attempts],
        "fallback_used": t.fallback_used,
    }


def _streamed(coe: CoE, prompt: str) -> Trace:
    async def run() -> Trace:
        async for event in coe.astream(prompt):
            if event.type == "done" and event.answer is not None:
                return event.answer.trace
        raise AssertionError("the stream ended without a done event")

    return coe.run(run())


def test_ask_stream_batch_and_server_take_the_same_path(registry: tuple[Path, StubState, StubState]) -> None:
    path, a, b = registry
    config = load_config(path)
    with CoE(config) as coe:
        asked = [_same(coe.ask(p).trace) for p in PROMPTS]
        streamed = [_same(_streamed(coe, p)) for p in PROMPTS]
        report = coe.batch(PROMPTS)
        batched = [_same(r.trace) for r in report.results if r.trace is not None]
    http = TestClient(create_app(config, ServerSettings(warm=False)))
    served = []
    for prompt in PROMPTS:
        body = {"model": "coe", "messages": [{"role": "user", "content": prompt}], "coe": {"trace": True}}
        resp = http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        served.append(_same(resp.json()["coe"]))

    assert asked == streamed == batched == served
    routed, to_b = asked
    assert routed["decision"]["router"] == "category" and routed["decision"]["experts"][0] == "a"
    assert to_b["decision"]["router"] == "signals" and to_b["decision"]["experts"] == ["b"]
    assert to_b["signals"]["routed_to"] == "b"
    for trace in asked:  # the guard read the prompt, then the turn that holds the retrieved document
        assert [v["evidence"].get("read") for v in trace["verdicts"] if v["signal"] == "guard"] == [
            "turns since the last assistant turn",
            "retrieved documents",
        ]
        assert trace["retrieval"]["documents"] == ["festival"]
    # The experts were sent the same prompt with the document, whichever entry point asked (a route
    # verdict sends the prompt as written: only redact rewrites it).
    sent_a = [body["messages"][-1]["content"] for body in a.bodies]
    assert len(sent_a) == 4 and len(set(sent_a)) == 1 and BLOCKED_PROMPT in sent_a[0]
    sent_b = [body["messages"][-1]["content"] for body in b.bodies]
    assert len(sent_b) == 4 and len(set(sent_b)) == 1 and "alice@example.com" in sent_b[0]
    assert BLOCKED_PROMPT in sent_b[0]
