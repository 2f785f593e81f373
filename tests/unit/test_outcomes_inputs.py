"""Outcome inputs: our own JSONL format, train/test sides, and the on-disk embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coe.encoding.cache import EmbeddingCache
from coe.encoding.embedder import Embedder
from coe.encoding.view import text_view
from coe.evaluation.data import DataError
from coe.evaluation.outcome_inputs import load_sides
from coe.evaluation.outcomes import load_outcomes
from tests.support.files import write_jsonl


def test_our_format_groups_rows_by_prompt(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "o.jsonl",
        [
            {"prompt": "2+2?", "category": "math", "expert": "big", "score": True, "cost": 7},
            {"prompt": "2+2?", "category": "math", "expert": "small", "score": 0.25, "cost": 1},
            {"id": "q2", "prompt": "hi", "expert": "small", "score": 1, "cost": 1},
            {"id": "q2", "prompt": "hi", "expert": "big", "score": 0, "cost": 7},
        ],
    )
    t = load_outcomes("coe", [f])
    assert t.models == ["big", "small"]
    assert t.prompts == ["2+2?", "hi"] and t.tasks == ["math", "default"]
    assert t.quality.tolist() == [[1.0, 0.25], [0.0, 1.0]]
    assert t.cost.tolist() == [[7.0, 1.0], [7.0, 1.0]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "expert": "x", "score": 1}], ":1: missing field 'cost'"),
        ([{"prompt": " ", "expert": "x", "score": 1, "cost": 1}], ":1: 'prompt' is empty"),
        ([{"prompt": "a", "expert": "x", "score": 1, "cost": -1}], ":1: 'cost' must be a number >= 0"),
        (
            [
                {"prompt": "a", "expert": "x", "score": 1, "cost": 1},
                {"prompt": "a", "expert": "x", "score": 0, "cost": 1},
            ],
            ":2: a second row for prompt 'a' and expert 'x'",
        ),
        (
            [
                {"prompt": "a", "expert": "x", "score": 1, "cost": 1},
                {"prompt": "b", "expert": "y", "score": 0, "cost": 1},
            ],
            ":1: prompt 'a' has no row for expert(s) y",
        ),
        (
            [
                {"prompt": "a", "expert": "x", "score": 1, "cost": 1, "category": "m"},
                {"prompt": "a", "expert": "y", "score": 1, "cost": 1, "category": "n"},
            ],
            ":2: category 'n', but line 1 says 'm'",
        ),
    ],
)
def test_our_format_names_file_and_line(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_outcomes("coe", [f])
    assert f"{f}{message}" in str(err.value)


def test_sides_split_by_prompt_or_take_test_files(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        for expert in ("a", "b"):
            rows.append({"prompt": f"question number {i}", "expert": expert, "score": i % 2, "cost": 1})
    folder = tmp_path / "data"
    folder.mkdir()
    part = write_jsonl(folder / "part.jsonl", rows)
    train, test, source = load_sides("coe", [folder], [], 0.25)
    assert len(train) + len(test) == 40 and 0 < len(test) < 20
    assert not set(train.prompts) & set(test.prompts)
    assert "held-out 25%" in source
    # The same file on both sides is split the same way (and deterministically).
    again, again_test, _ = load_sides("coe", [part], [part], 0.25)
    assert again.prompts == train.prompts and again_test.prompts == test.prompts
    # A separate test file is taken whole; training prompts also found there leave the training side.
    other = write_jsonl(tmp_path / "test.jsonl", rows[:20])
    train, test, source = load_sides("coe", [folder], [other], 0.25)
    assert source == "test files" and len(test) == 10 and len(train) == 30
    with pytest.raises(DataError, match="between 0 and 1"):
        load_sides("coe", [folder], [], 1.5)
    strangers = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "x", "expert": "c", "score": 1, "cost": 1}])
    with pytest.raises(DataError, match="have models"):
        load_sides("coe", [folder], [strangers], 0.25)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no jsonl"):
        load_sides("coe", [empty], [], 0.25)


def test_text_view_keeps_the_question_of_a_few_shot_prompt() -> None:
    demos = "Q: what is 1+1?\nA: 2\n\n" * 60
    a, b = demos + "Q: capital of France?\nA:", demos + "Q: boiling point of water?\nA:"
    assert text_view(a, 512) != text_view(b, 512)  # the head alone would be identical
    assert len(text_view(a, 512)) <= 512 + 5
    assert text_view("short prompt", 512) == "short prompt"


def test_embedding_cache_returns_the_encoder_vectors_and_reuses_them(tmp_path: Path) -> None:
    embedder = Embedder()
    texts = ["Write a haiku about rain", "What is 17 times 23?", "Write a haiku about rain"]
    cache = EmbeddingCache(embedder, root=tmp_path)
    first = cache.encode(texts)
    assert cache.misses == 2 and cache.hits == 1  # the repeated text is encoded once
    np.testing.assert_allclose(first, embedder.encode(texts), atol=1e-5)
    fresh = EmbeddingCache(embedder, root=tmp_path)  # a new process reads the shards back
    np.testing.assert_array_equal(fresh.encode(texts), first)
    assert fresh.misses == 0 and fresh.hits == 3
    assert list(tmp_path.rglob("shard-*.npz"))
