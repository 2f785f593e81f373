"""Retrieval gating on the request path: the five gates, context injection, the `retrieval:` block of
the registry, and `ask`/`astream` through a real llama.cpp expert (SmolLM2-135M) with documents from a
real MiniLM + faiss index, including a failing retrieval that still answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coe import CoE
from coe.config import load_config
from coe.types import StreamEvent
from tests.support.registries import rag_registry

SHORT = {"max_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def coe_rag(rag_dir: Path) -> Iterator[CoE]:
    coe = CoE(
        load_config(rag_registry(rag_dir, "{gate: classifier, index: index, model: gate.npz, top_k: 2}"))
    )
    yield coe
    coe.close()


@pytest.fixture
def encoded(coe_rag: CoE, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every batch of texts the shared encoder (the router's and the gate's) encodes during a test."""
    impl = coe_rag.retriever.embedder._load()
    real = impl.encode
    calls: list[list[str]] = []

    def counting(texts: list[str], *args: object) -> object:
        calls.append(list(texts))
        return real(texts, *args)

    monkeypatch.setattr(impl, "encode", counting)
    return calls


@pytest.mark.e2e
def test_ask_puts_documents_into_the_experts_prompt(coe_rag: CoE) -> None:
    answer = coe_rag.ask("Who designed the Kelvor bridge?", **SHORT)
    retrieval = answer.trace.retrieval
    assert answer.text.strip() and retrieval is not None
    assert retrieval.gate == "classifier" and retrieval.retrieve and retrieval.documents[0] == "kelvor-bridge"
    assert "retrieve" in answer.trace.timings_ms
    with_docs = answer.usage.prompt_tokens
    plain = coe_rag.ask("Write a haiku about autumn leaves.", **SHORT)
    assert plain.trace.retrieval is not None and not plain.trace.retrieval.retrieve
    assert with_docs > plain.usage.prompt_tokens + 60  # two chunks of ~50-80 tokens each went in


@pytest.mark.e2e
def test_routing_and_retrieval_embed_the_prompt_once_per_request(
    coe_rag: CoE, encoded: list[list[str]]
) -> None:
    prompt = "Who designed the Kelvor bridge?"
    for _ in range(2):
        answer = coe_rag.ask(prompt, **SHORT)
        assert answer.trace.retrieval is not None and answer.trace.retrieval.retrieve
    # Once per request, for the router and the gate and the search together; never cached across requests.
    assert encoded == [[prompt], [prompt]]


@pytest.mark.e2e
def test_stream_gets_the_same_documents(coe_rag: CoE) -> None:
    async def collect() -> list[StreamEvent]:
        return [e async for e in coe_rag.astream("When is the Zorblax festival held?", **SHORT)]

    events = coe_rag.run(collect())  # the loop the module's CoE (and its HTTP client) lives in
    assert [e.type for e in events][-1] == "done" and any(e.text for e in events[:-1])
    done = events[-1].answer
    assert done is not None and done.trace.retrieval is not None
    assert "quillport-festival" in done.trace.retrieval.documents


@pytest.mark.e2e
def test_failing_retrieval_still_answers_and_the_trace_says_why(coe_rag: CoE, tmp_path: Path) -> None:
    # The same running llama-server, reached as an endpoint, behind a registry whose index is missing.
    url = coe_rag.run(coe_rag.pool.url_for("reader"))
    path = rag_registry(tmp_path, "{gate: always, index: missing-index}", expert=f"endpoint: {url}")
    with CoE(load_config(path)) as coe:
        answer = coe.ask("Who designed the Kelvor bridge?", **SHORT)
    retrieval = answer.trace.retrieval
    assert answer.text.strip() and answer.expert == "reader"
    assert retrieval is not None and not retrieval.retrieve and retrieval.documents == []
    assert "no such index folder" in (retrieval.error or "")
    assert retrieval.reason == "retrieval failed: answering without documents"


@pytest.mark.e2e
def test_batch_applies_the_same_gate_as_ask(coe_rag: CoE, encoded: list[list[str]]) -> None:
    report = coe_rag.batch(
        [
            {"id": "fact", "prompt": "Who designed the Kelvor bridge?"},
            {"id": "poem", "prompt": "Write a haiku about autumn leaves."},
        ],
        params=SHORT,
    )
    by_id = report.by_id()
    fact, poem = by_id["fact"].trace, by_id["poem"].trace
    assert by_id["fact"].answer and by_id["poem"].answer
    assert fact is not None and fact.retrieval is not None and fact.retrieval.documents[0] == "kelvor-bridge"
    assert poem is not None and poem.retrieval is not None and not poem.retrieval.retrieve
    # Routing and the gate share one encoder call for the whole batch (the router's own examples
    # are encoded once when it is first built, before any prompt).
    prompts = ["Who designed the Kelvor bridge?", "Write a haiku about autumn leaves."]
    assert [texts for texts in encoded if prompts[0] in texts] == [prompts]
