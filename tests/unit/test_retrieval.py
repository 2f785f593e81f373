"""Retrieval gating on the request path: the five gates, context injection, the `retrieval:` block of
the registry, and `ask`/`astream` through a real llama.cpp expert (SmolLM2-135M) with documents from a
real MiniLM + faiss index, including a failing retrieval that still answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coe.config import load_config, parse_config
from coe.errors import ConfigError
from coe.retrieval.index import Hit
from coe.retrieval.retriever import Retriever, inject
from coe.types import Message, Request, RouteDecision
from tests.support.registries import rag_registry


def retriever(folder: Path, retrieval: str) -> Retriever:
    return Retriever(load_config(rag_registry(folder, retrieval)))


def run(r: Retriever, text: str, category: str | None = "facts") -> tuple[Request, object]:
    decision = RouteDecision(router="test", experts=["reader"], category=category)
    return r.run(Request.from_input(text), decision)


# ----------------------------------------------------------------------------------------- gates


def test_never_gate_leaves_the_prompt_alone_and_searches_nothing(rag_dir: Path) -> None:
    request, trace = run(retriever(rag_dir, "{gate: never}"), "Who designed the Kelvor bridge?")
    assert request.text == "Who designed the Kelvor bridge?"
    assert (trace.retrieve, trace.searched, trace.documents, trace.error) == (False, False, [], None)


def test_always_gate_injects_the_best_chunks_with_their_ids(rag_dir: Path) -> None:
    request, trace = run(
        retriever(rag_dir, "{gate: always, index: index, top_k: 2}"), "Who designed the Kelvor bridge?"
    )
    assert trace.retrieve and trace.documents[0] == "kelvor-bridge" and len(trace.scores) == 2
    assert trace.scores[0] >= trace.scores[1] and trace.score == trace.scores[0]
    text = request.text
    assert "[kelvor-bridge] Kelvor bridge: The Kelvor bridge is a suspension bridge" in text
    assert "cite the ids" in text and text.endswith("Question: Who designed the Kelvor bridge?")


def test_similarity_gate_keeps_documents_only_above_its_threshold(rag_dir: Path) -> None:
    r = retriever(rag_dir, "{gate: similarity, index: index, threshold: 0.45}")
    _, kept = run(r, "How long is the main span of the Kelvor bridge?")
    request, dropped = run(r, "Write a haiku about autumn leaves.")
    assert kept.retrieve and kept.documents[0] == "kelvor-bridge" and kept.score >= 0.45
    assert not dropped.retrieve and dropped.searched and dropped.documents == [] and dropped.score < 0.45
    assert "< threshold 0.450: documents dropped" in dropped.reason
    assert request.text == "Write a haiku about autumn leaves."


def test_category_gate_follows_the_routed_categorys_flag(rag_dir: Path) -> None:
    r = retriever(rag_dir, "{gate: category, index: index}")
    _, facts = run(r, "Who founded the Zorblax festival?", "facts")
    _, chat = run(r, "Who founded the Zorblax festival?", "chat")
    _, pinned = run(r, "Who founded the Zorblax festival?", None)
    assert facts.retrieve and "quillport-festival" in facts.documents
    assert not chat.retrieve and not chat.searched and "'chat' has retrieve: false" in chat.reason
    assert not pinned.retrieve and "no routed category" in pinned.reason


def test_classifier_gate_searches_only_for_prompts_it_sends_to_retrieval(rag_dir: Path) -> None:
    r = retriever(rag_dir, "{gate: classifier, index: index, model: gate.npz}")
    _, fact = run(r, "What did Nimbus Robotics spend on capital expenditure in 2023?")
    _, sum_ = run(r, "Lisa has 9 apples and eats 4. How many are left?")
    assert fact.retrieve and "nimbus-10k-2023" in fact.documents and fact.score > 0.5
    assert not sum_.retrieve and not sum_.searched and sum_.score < 0.5
    assert "p(needs retrieval)" in sum_.reason


def test_failures_answer_without_documents_and_say_why(rag_dir: Path, tmp_path: Path) -> None:
    _, missing = run(retriever(tmp_path, "{gate: always, index: nowhere}"), "Who designed the Kelvor bridge?")
    assert not missing.retrieve and "no such index folder" in missing.error
    shutil.copytree(rag_dir / "index", tmp_path / "index")
    (tmp_path / "index" / "vectors.faiss").write_bytes(b"\x00" * 64)
    request, corrupt = run(
        retriever(tmp_path, "{gate: always, index: index}"), "Who designed the Kelvor bridge?"
    )
    assert "corrupt faiss index" in corrupt.error and request.text == "Who designed the Kelvor bridge?"
    _, bad_model = run(retriever(tmp_path, "{gate: classifier, index: index, model: none.npz}"), "Who?")
    assert "no such gate file" in bad_model.error


# ------------------------------------------------------------------------------------- injection


def test_injection_keeps_system_prompt_and_history_and_is_brace_safe() -> None:
    request = Request.from_input(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Explain {documents} in f-strings"},
        ]
    )
    hit = Hit(id="d#1", doc_id="d", title=None, text="a {question} b", score=0.9)
    out = inject(request, [hit], "Docs:\n{documents}\nQ: {question}\nCite [{first_id}].")
    assert [m.content for m in out.messages[:3]] == ["Be brief.", "Hi", "Hello"]
    assert out.messages[3] == Message(
        role="user", content="Docs:\n[d#1] a {question} b\nQ: Explain {documents} in f-strings\nCite [d#1]."
    )
    assert (
        request.messages[3].content == "Explain {documents} in f-strings"
    )  # the caller's request is untouched


def test_documents_beyond_the_character_budget_are_dropped(rag_dir: Path) -> None:
    r = retriever(rag_dir, "{gate: always, index: index, top_k: 4, max_context_chars: 300}")
    request, trace = run(r, "Tell me about the Kelvor bridge")
    assert (
        len(trace.documents) == 1 and len(request.text) < 300 + 400
    )  # one (cut) chunk + template + question


# ---------------------------------------------------------------------------------------- config


def test_retrieval_block_is_validated_with_key_paths(tmp_path: Path) -> None:
    def issues(block: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_config(rag_registry(tmp_path, block))
        return info.value.issues

    assert "retrieval.gate: Input should be 'never', 'always'" in issues("{gate: sometimes}")[0]
    assert (
        "retrieval.topk: unknown key 'topk'; expected one of: gate, index, model"
        in issues("{gate: never, topk: 3}")[0]
    )
    assert "retrieval.index: gate 'always' needs an index" in issues("{gate: always}")[0]
    assert "retrieval.model: gate 'classifier' needs a model" in issues("{gate: classifier, index: i}")[0]
    assert (
        "retrieval.prompt: must contain {question}" in issues("{gate: never, prompt: 'Docs: {documents}'}")[0]
    )
    flagged = rag_registry(tmp_path, "{gate: category, index: i}").read_text()
    no_flags = flagged.replace("retrieve: true", "retrieve: false")
    with pytest.raises(
        ConfigError, match=r"retrieval.gate: gate 'category' needs at least one router category"
    ):
        parse_config(no_flags)


def test_paths_resolve_against_the_registry_file(rag_dir: Path) -> None:
    config = load_config(rag_registry(rag_dir, "{gate: always, index: index}"))
    assert config.resolve_path(config.retrieval.index) == rag_dir / "index"
    assert config.router.categories["facts"].retrieve and not config.router.categories["chat"].retrieve


# ------------------------------------------------------------------- end to end with llama.cpp
