"""The semantic cache's parts: the pair matcher, the scope key, and the three stores (a real SQLite
file, a real Redis), with the router's encoder for the vectors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coe.config import EmbedderConfig
from coe.config.signals import CacheConfig
from coe.encoding.embedder import shared_embedder
from coe.signals.cache.evaluation import PairsError, read_pairs
from coe.signals.cache.features import guard, refusal
from coe.signals.cache.fitting import bucket, choose_threshold, sentence_groups, wilson
from coe.signals.cache.matcher import SHIPPED, Matcher, Verifier
from coe.signals.cache.runtime import Embedding, SemanticCache
from coe.signals.cache.store import MemoryCache, RedisCache, SqliteCache
from coe.types import Answer, Request, Tool
from tests.support.paths import DEFAULT_REGISTRY, ROOT
from tests.support.redis import redis_binary, redis_server

needs_redis = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (make venv)")


@pytest.fixture(scope="module")
def embedder() -> Any:
    return shared_embedder(EmbedderConfig(backend="onnx-int8"))


def embed(embedder: Any, text: str) -> Embedding:
    return Embedding(embedder.encode([text])[0], f"{embedder.space}@full", embedder.space)


def cache(store: Any = None, **cfg: Any) -> SemanticCache:
    config = CacheConfig(**cfg)
    verifier = Verifier.load(SHIPPED)
    return SemanticCache(config, store or MemoryCache(3600, 100), Matcher(verifier, config.min_cosine))


def ask(text: str, history: list[dict[str, str]] | None = None, **fields: Any) -> Request:
    return Request.from_input([*(history or []), {"role": "user", "content": text}], **fields)


ANSWER = Answer(text="Use str[::-1].", expert="coder", model="smollm2", finish_reason="stop")


async def miss_then_put(c: SemanticCache, request: Request, emb: Embedding) -> None:
    trace, answer, pending = await c.lookup(request, "routed", emb)
    assert trace.status == "miss" and answer is None and pending is not None
    await c.put(pending, ANSWER)


def test_the_guard_refuses_pairs_that_differ_in_a_number_a_date_or_a_negation() -> None:
    assert guard("Convert 5 km to miles", "Convert 50 km to miles") == "different numbers"
    assert guard("Stocks close lower on Monday", "Stocks close lower on Friday") is not None
    assert guard("Is Python typed?", "Isn't Python typed?") == "one is negated"
    assert guard("How do I sort a list in Python?", "How can I sort a Python list?") is None
    assert guard("Two eagles on a branch.", "Two bald eagles on a high dead branch.") is not None


# A near miss of each kind the guard must refuse: the two wordings are close enough for the encoder
# and the verifier, but one answer is wrong for the other.
NEAR_MISSES = {
    "number": ("How many bytes are in 64 kilobytes?", "How many bytes are in 32 kilobytes?"),
    "date": ("What happened on 2021-03-04?", "What happened on 2021-04-03?"),
    "negation": ("Why is my Python script running?", "Why is my Python script not running?"),
    "entity": ("What is the capital city of Austria?", "What is the capital city of Australia?"),
    "identifier": ("What does os.path.join return?", "What does os.path.split return?"),
}


@pytest.mark.parametrize("kind", sorted(NEAR_MISSES))
def test_a_near_miss_of_each_kind_is_refused_by_its_reason(kind: str) -> None:
    a, b = NEAR_MISSES[kind]
    assert refusal(a, b) is not None and refusal(a, b)[0] == kind  # type: ignore[index]
    assert refusal(b, a) is not None and refusal(b, a)[0] == kind  # type: ignore[index]


def test_the_guard_reads_entities_and_identifiers_without_an_ner_model() -> None:
    assert refusal("Who founded Apple?", "Who founded Microsoft?") == ("entity", "different named entities")
    assert refusal("Is HashMap thread-safe?", "Is HashSet thread-safe?") is not None
    assert refusal("What does the --force flag do?", "What does the --quiet flag do?") is not None
    # a headline's Title Case, and a name and its adjective, are not different entities
    headline = "NATO Soldier Killed In Afghan Attack"
    assert refusal(headline, "NATO soldier killed in Afghanistan attack") is None
    assert refusal("Tell me about Rome.", "Tell me about rome") is None


def test_near_misses_of_every_kind_never_hit_the_cache(embedder: Any) -> None:
    async def go() -> None:
        for kind, (stored, asked) in NEAR_MISSES.items():
            c = cache()
            first = ask(stored)
            await miss_then_put(c, first, embed(embedder, first.text))
            trace, answer, _ = await c.lookup(ask(asked), "routed", embed(embedder, asked))
            assert trace.status == "miss" and answer is None, (kind, trace)
            if trace.refused is not None:  # the verifier let it through: the guard names why not
                assert trace.refused == kind, (kind, trace)
            # a matcher that lets any cosine and any probability through still refuses, saying why
            anything = Matcher(Verifier.load(SHIPPED), min_cosine=-1.0, threshold=0.0)
            verdict = anything.decide(trace.similarity or 0.0, asked, stored)
            assert not verdict.hit and verdict.refused == kind, (kind, verdict)

    asyncio.run(go())


def test_a_guard_refusal_is_counted_by_its_reason_in_prometheus() -> None:
    from coe.server.metrics import Metrics
    from coe.types import CacheTrace, Trace

    metrics = Metrics()
    answer = ANSWER.model_copy(deep=True)
    answer.trace = Trace(cache=CacheTrace(status="miss", refused="entity"))
    metrics.observe_answer(answer)
    answer.trace = Trace(cache=CacheTrace(status="miss"))
    metrics.observe_answer(answer)
    text = metrics.render().decode()
    assert 'coe_cache_lookups_total{match="none",result="refused_entity"} 1.0' in text
    assert 'coe_cache_lookups_total{match="none",result="miss"} 1.0' in text


def test_the_shipped_verifier_names_the_default_encoder_and_its_out_of_fold_numbers(embedder: Any) -> None:
    verifier = Verifier.load(SHIPPED)
    assert verifier.encoder == embedder.space
    assert 0.5 <= verifier.threshold < 1
    assert verifier.trained_on["target_precision"] == 0.98
    recorded = verifier.out_of_fold
    assert recorded is not None and recorded["threshold"] == verifier.threshold
    assert recorded["precision"] >= 0.98 and recorded["folds"] == 5
    lo, hi = recorded["precision_ci95"]
    assert lo < recorded["precision"] <= hi


def test_folds_keep_pairs_that_share_a_sentence_together_and_the_threshold_is_for_precision() -> None:
    a = ["A cat sits.", "a  cat sits.", "A dog runs.", "Birds fly."]
    b = ["A cat is sitting.", "A kitten sits.", "A kitten sits.", "Fish swim."]
    groups = sentence_groups(a, b)
    assert groups[0] == groups[1] == groups[2] != groups[3]  # linked through "A kitten sits."
    assert len({bucket(g, "fold", 5) for g in groups[:3]}) == 1
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.89, 0.88])
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1])
    eligible = np.ones(12, dtype=bool)
    assert choose_threshold(scores, eligible, labels, 0.95) == 0.90  # 10 of 10; 0.88 gives 11 of 12
    assert choose_threshold(scores, eligible, labels, 0.999) == 0.90
    assert choose_threshold(scores[:9], eligible[:9], labels[:9], 0.5) == 1.0  # fewer than 10 hits
    lo, hi = wilson(60, 60)
    assert hi == 1.0 and 0.93 < lo < 0.95  # every hit right still leaves room for a few wrong ones


def test_a_verifier_survives_a_round_trip_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    verifier = Verifier.load(SHIPPED)
    verifier.save(tmp_path / "v.npz")
    again = Verifier.load(tmp_path / "v.npz")
    x = np.array([0.9, 0.5, 0.3, 2.0, 0.0, 0.8])
    assert again.probability(x)[0] == pytest.approx(verifier.probability(x)[0])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a cache verifier"):
        Verifier.load(tmp_path / "bad.npz")


def test_pair_files_report_every_bad_line_and_the_split_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        '{"a": "x", "b": "y", "label": 1}',
        "not json",
        '{"a": "x", "label": 0}',
        '{"a": "", "b": "y", "label": 2}',
    ]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(PairsError) as exc:
        read_pairs(path)
    message = str(exc.value)
    assert f"{path}:2: not JSON" in message and f"{path}:3: missing field 'b'" in message
    assert f"{path}:4: 'a' and 'b' must be non-empty strings" in message
    path.write_text(
        "".join(
            json.dumps({"a": f"Sentence {i}.", "b": f"Sentence {(i + 1) % 40}.", "label": 1}) + "\n"
            if i < 40
            else json.dumps({"a": f"Other {i}.", "b": f"Else {i}.", "label": 0}) + "\n"
            for i in range(100)
        )
    )
    train, validation = read_pairs(path, "train"), read_pairs(path, "validation")
    assert len(train.labels) + len(validation.labels) == 100 and validation.labels
    seen = set(train.a) | set(train.b)
    assert not seen & (set(validation.a) | set(validation.b))  # a sentence is on one side only
    assert sum(train.labels) in (0, 40)  # the 40 pairs of the ring share sentences: one group, one side


def test_exact_and_paraphrase_hits_within_one_scope(embedder: Any) -> None:
    async def go() -> None:
        c = cache()
        first = ask("How do I reverse a string in Python?")
        await miss_then_put(c, first, embed(embedder, first.text))
        trace, answer, _ = await c.lookup(ask("How do I reverse a  string in Python?"), "routed", None)
        assert trace.status == "hit" and trace.match == "exact" and answer is not None
        assert answer.text == ANSWER.text and answer.expert == "coder"
        para = ask("How can I reverse a string in Python?")
        trace, answer, _ = await c.lookup(para, "routed", embed(embedder, para.text))
        assert trace.status == "hit" and trace.match == "semantic", trace
        assert trace.similarity is not None and trace.similarity > 0.9 and answer is not None
        near = ask("How do I reverse a list in Python?")
        trace, answer, _ = await c.lookup(near, "routed", embed(embedder, near.text))
        assert trace.status == "miss" and answer is None and "refused" in trace.reason

    asyncio.run(go())


def test_without_the_routers_vector_only_exact_matches_hit_and_the_trace_says_so(embedder: Any) -> None:
    async def go() -> None:
        c = cache()
        first = ask("How do I reverse a string in Python?")
        await miss_then_put(c, first, embed(embedder, first.text))
        trace, answer, pending = await c.lookup(ask("How can I reverse a string in Python?"), "routed", None)
        assert trace.status == "miss" and answer is None and pending is not None
        assert "router embedded nothing" in trace.reason and "exact matches only" in trace.reason

    asyncio.run(go())


def test_the_category_router_hands_over_the_vector_it_computed_and_never_encodes_again() -> None:
    from coe import CoE, load_config
    from coe.encoding.embedder import request_scope
    from coe.signals.cache.runtime import router_embedding

    coe = CoE(load_config(DEFAULT_REGISTRY))
    request = ask("Write a Python function that reverses a string")
    assert router_embedding(coe.router, request) is None  # outside a request scope: nothing computed
    with request_scope():
        assert router_embedding(coe.router, request) is None  # not routed yet: nothing to reuse
        coe.decide([request])
        found = router_embedding(coe.router, request)
    assert found is not None
    expected = coe.router.embedder.encode([request.text])[0]  # type: ignore[attr-defined]
    assert np.allclose(found.vector, expected) and found.encoder == Verifier.load(SHIPPED).encoder


def test_zero_hits_across_conversations_tools_system_prompts_params_and_models(embedder: Any) -> None:
    text = "How do I reverse a string in Python?"
    tool = Tool.model_validate(
        {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {}}}}
    )
    other_tool = Tool.model_validate(
        {"type": "function", "function": {"name": "run", "parameters": {"type": "object", "required": ["x"]}}}
    )
    earlier = [{"role": "user", "content": "I use Rust."}, {"role": "assistant", "content": "Noted."}]
    variants = [
        ask(text, earlier),
        ask(text, [{"role": "user", "content": "I use Go."}, {"role": "assistant", "content": "Noted."}]),
        ask(text, [{"role": "system", "content": "Answer in French."}]),
        ask(text, tools=[tool]),
        ask(text, tools=[other_tool]),
        ask(text, params={"max_tokens": 8}),
        ask(text, response_format={"type": "json_object"}),
    ]

    async def go() -> None:
        c = cache()
        emb = embed(embedder, text)
        await miss_then_put(c, ask(text), emb)
        hits = []
        for request in variants:
            trace, _, pending = await c.lookup(request, "routed", emb)
            hits.append(trace.status == "hit")
            assert pending is not None
            await c.put(pending, ANSWER)  # each variant now has an entry of its own
        trace, _, _ = await c.lookup(ask(text), "expert:general", emb)  # another model asked
        hits.append(trace.status == "hit")
        assert sum(hits) == 0
        keys = {c.scope_key(r, "routed", None) for r in [ask(text), *variants]}
        assert len(keys) == len(variants) + 1

    asyncio.run(go())


def test_sampled_requests_are_not_cached_unless_configured() -> None:
    sampled = ask("Tell me a joke", params={"temperature": 0.7})
    assert cache().scope_key(sampled, "routed", None) is None
    assert cache().scope_key(ask("Tell me a joke"), "routed", 0.8) is None  # the expert's default samples
    assert cache(cache_sampled=True).scope_key(sampled, "routed", None) is not None
    neutral = ask("Tell me a joke", params={"temperature": 0, "metadata": {"a": "b"}, "user": "u1"})
    assert cache().scope_key(neutral, "routed", None) == cache().scope_key(
        ask("Tell me a joke", params={"temperature": 0}), "routed", None
    )


def test_a_wrong_key_names_its_path() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="treshold"):
        CacheConfig.model_validate({"treshold": 0.9})
    with pytest.raises(ValidationError, match="url"):
        CacheConfig(store="redis")


def test_sqlite_keeps_entries_across_instances_and_a_corrupt_file_degrades(
    tmp_path: Path, embedder: Any
) -> None:
    path = tmp_path / "cache.db"
    request = ask("How do I reverse a string in Python?")

    async def go() -> None:
        c = cache(SqliteCache(path, 3600, 100))
        await miss_then_put(c, request, embed(embedder, request.text))
        await c.aclose()
        again = cache(SqliteCache(path, 3600, 100))
        trace, answer, _ = await again.lookup(request, "routed", None)
        assert trace.status == "hit" and answer is not None and answer.text == ANSWER.text
        assert (await again.store.stats())["entries"] == 1
        await again.aclose()
        bad = tmp_path / "corrupt.db"
        bad.write_bytes(b"this is not a database" * 100)
        broken = cache(SqliteCache(bad, 3600, 100))
        trace, answer, pending = await broken.lookup(request, "routed", None)
        assert trace.status == "error" and answer is None and pending is None
        assert trace.error is not None and trace.error.startswith(f"sqlite {bad}")

    asyncio.run(go())


@needs_redis
def test_redis_shares_entries_at_once_and_a_dead_redis_degrades(embedder: Any) -> None:
    request = ask("How do I reverse a string in Python?")
    para = ask("How can I reverse a string in Python?")

    async def go(url: str, proc: Any) -> None:
        a = cache(RedisCache(url, 3600, 100, 0.5))
        b = cache(RedisCache(url, 3600, 100, 0.5))
        trace, _, _ = await b.lookup(para, "routed", embed(embedder, para.text))
        assert trace.status == "miss"  # b now holds the scope's (empty) index
        await miss_then_put(a, request, embed(embedder, request.text))
        # Another replica's answer is seen by b's very next lookup, not after a refresh interval.
        trace, answer, _ = await b.lookup(para, "routed", embed(embedder, para.text))
        assert trace.status == "hit" and trace.match == "semantic" and answer is not None
        assert trace.candidates == 1 and answer.text == ANSWER.text
        assert (await b.store.stats())["entries"] == 1
        proc.kill()
        proc.wait()
        trace, answer, _ = await b.lookup(request, "routed", None)
        assert trace.status == "error" and answer is None and trace.error is not None
        assert trace.error.startswith(f"redis {url}")
        await a.aclose()
        await b.aclose()

    with redis_server() as (url, proc):
        asyncio.run(go(url, proc))


def coe_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COE_CACHE_DIR": str(cwd / "state")}
    return subprocess.run(
        [sys.executable, "-m", "coe", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_cache_stats_and_clear_read_the_registrys_sqlite_store(tmp_path: Path, embedder: Any) -> None:
    db = tmp_path / "answers.db"
    registry = tmp_path / "experts.yaml"
    text = DEFAULT_REGISTRY.read_text() + f"\nsignals:\n  cache: {{store: sqlite, path: '{db}'}}\n"
    registry.write_text(text)
    request = ask("How do I reverse a string in Python?")

    async def fill() -> None:
        c = cache(SqliteCache(db, 3600, 100))
        await miss_then_put(c, request, embed(embedder, request.text))
        await c.aclose()

    asyncio.run(fill())
    stats = coe_cli("cache", "stats", "--json", "-c", str(registry), cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    shown = json.loads(stats.stdout)
    verifier = shown.pop("verifier")
    assert shown == {"store": "sqlite", "path": str(db), "entries": 1, "scopes": 1}
    assert verifier["threshold"] == Verifier.load(SHIPPED).threshold
    assert verifier["recorded"]["precision"] >= 0.98 and len(verifier["recorded"]["precision_ci95"]) == 2
    plain = " ".join(coe_cli("cache", "stats", "-c", str(registry), cwd=tmp_path).stdout.split())
    assert "recorded out of fold" in plain and "wrong of" in plain
    cleared = coe_cli("cache", "clear", "-c", str(registry), cwd=tmp_path)
    assert cleared.returncode == 0 and cleared.stdout.strip() == "cleared 1 cached answers"
    assert (
        json.loads(coe_cli("cache", "stats", "--json", "-c", str(registry), cwd=tmp_path).stdout)["entries"]
        == 0
    )


def test_eval_cache_reports_its_keys_and_every_bad_line(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "a": "How do I reverse a string in Python?",
            "b": "How can I reverse a string in Python?",
            "label": 1,
        },
        {"a": "Convert 5 km to miles", "b": "Convert 50 km to miles", "label": 0, "score": 2.0},
        {
            "a": "How do I sort a list in Python?",
            "b": "How do I sort a list in Java?",
            "label": 0,
            "score": 1.5,
        },
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = coe_cli("eval", "cache", str(pairs), "--json", "-c", str(DEFAULT_REGISTRY), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # every row of a file scored by default: no split to hold out
    assert {"precision", "precision_ci95", "wrong_hits", "recall", "by_score_band"} <= set(result)
    assert (result["n"], result["hits"], result["wrong_hits"], result["precision"]) == (3, 1, 0, 1.0)
    assert result["precision_ci95"][1] == 1.0 and result["precision_ci95"][0] < 0.5  # one hit says little
    assert result["blocked_by_guard"] == 2 and result["by_score_band"]["2-3"]["hits"] == 0
    assert set(result["refused"]) >= {"number", "date", "negation", "entity", "identifier"}
    assert result["recorded"]["precision"] >= 0.98  # the shipped verifier's out-of-fold numbers
    fitted = coe_cli(
        "train-cache", str(pairs), "--split", "all", "--out", str(tmp_path / "v.npz"), cwd=tmp_path
    )
    assert fitted.returncode == 0, fitted.stderr
    assert Verifier.load(tmp_path / "v.npz").trained_on["pairs"] == 3  # too few to reach the target:
    assert Verifier.load(tmp_path / "v.npz").threshold == 1.0  # the threshold stays at its ceiling
    pairs.write_text(json.dumps(rows[0]) + "\n{oops\n" + '{"a": "x", "b": "y", "label": "yes"}\n')
    bad = coe_cli("eval", "cache", str(pairs), "--split", "all", cwd=tmp_path)
    assert bad.returncode == 1
    assert f"{pairs}:2: not JSON" in bad.stderr and f"{pairs}:3: 'label' must be 0 or 1" in bad.stderr
