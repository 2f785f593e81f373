"""Two-step routing on the default registry with the real MiniLM encoder (no LLM involved)."""

from __future__ import annotations

import numpy as np
import pytest

from coe import CoE, Request
from coe.config import load_config
from routers.category import CentroidClassifier
from tests.conftest import DEFAULT_REGISTRY


@pytest.mark.parametrize(
    ("prompt", "category", "expert"),
    [
        ("Write a Python function that reverses a string", "code", "coder"),
        ("How do I sort a dictionary by value in Python?", "code", "coder"),
        ("Tell me a short story about a fox", "general", "general"),
        ("What is the capital of France?", "general", "general"),
        ("Solve 2x + 3 = 11 for x", "math", "coder"),
        ("What is 15% of 240?", "math", "coder"),
    ],
)
def test_default_registry_routes_to_the_right_expert(router, prompt: str, category: str, expert: str) -> None:  # type: ignore[no-untyped-def]
    [decision] = router.route([Request.from_input(prompt)])
    assert decision.category == category
    assert decision.expert == expert
    assert not decision.fallback
    assert f"'{category}'" in decision.reason and f"'{expert}'" in decision.reason


def test_probabilities_are_a_distribution_over_categories(router) -> None:  # type: ignore[no-untyped-def]
    [decision] = router.route([Request.from_input("Explain recursion with an example in Python")])
    assert set(decision.scores) == {"code", "math", "general"}
    assert sum(decision.scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert decision.confidence == pytest.approx(max(decision.scores.values()), abs=1e-3)
    assert list(decision.scores) == sorted(decision.scores, key=decision.scores.get, reverse=True)


def test_batch_routing_matches_one_by_one(router) -> None:  # type: ignore[no-untyped-def]
    prompts = ["Write a haiku about rain", "Implement quicksort in Go", "What is 7 factorial?"]
    batch = router.route([Request.from_input(p) for p in prompts])
    single = [router.route([Request.from_input(p)])[0] for p in prompts]
    assert [d.expert for d in batch] == [d.expert for d in single]
    for a, b in zip(batch, single, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_candidates_are_ordered_and_end_with_the_fallback(router) -> None:  # type: ignore[no-untyped-def]
    [decision] = router.route([Request.from_input("Implement a stack class in Java with push and pop")])
    assert decision.experts[0] == "coder"
    assert decision.experts[-1] == "general"  # the fallback expert is the last resort
    assert len(decision.experts) == len(set(decision.experts))


def test_low_confidence_goes_to_the_fallback_expert(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = DEFAULT_REGISTRY.read_text().replace("min_confidence: 0.45", "min_confidence: 0.9999")
    path = tmp_path / "experts.yaml"
    path.write_text(text)
    coe = CoE(load_config(path))
    [decision] = coe.route("Is a tomato a fruit, and how many of them make a good sauce?")
    assert decision.fallback
    assert decision.expert == "general"
    assert "fallback expert 'general'" in decision.reason and "< min_confidence 1.00" in decision.reason
    assert decision.category in {"code", "math", "general"}
    assert not coe.pool.running  # routing never starts an expert


def test_pinned_expert_skips_routing(default_config) -> None:  # type: ignore[no-untyped-def]
    coe = CoE(default_config)
    [decision] = coe._decide([Request.from_input("Tell me a story", expert="coder")])
    assert decision.experts == ["coder"] and decision.router == "pinned"
    assert coe._router is None  # the encoder was not even loaded


def test_temperature_is_calibrated_on_the_examples(router) -> None:  # type: ignore[no-untyped-def]
    t = router.classifier.temperature
    assert 0.005 <= t <= 1.0
    # Calibration must beat an arbitrary extreme on the examples' own leave-one-out log loss.
    assert t not in (0.005, 1.0)


def test_centroid_classifier_on_separable_data() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal([1, 0, 0], 0.1, size=(10, 3))
    b = rng.normal([0, 1, 0], 0.1, size=(10, 3))
    x = np.vstack([a, b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    clf = CentroidClassifier.fit(x, [0] * 10 + [1] * 10, ["a", "b"])
    probs, _ = clf.predict_proba(np.array([[1, 0.05, 0], [0.05, 1, 0]], dtype=np.float32))
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9
