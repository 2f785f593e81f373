"""Two-step routing on the default registry with the real MiniLM encoder (no LLM involved)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from coe import CoE, Request
from coe.config import load_config
from routers.category.router import CentroidClassifier
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.registries import llm_registry


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
    [decision] = coe.decide([Request.from_input("Tell me a story", expert="coder")])
    assert decision.experts == ["coder"] and decision.router == "pinned"
    assert coe.parts.built_router is None  # the encoder was not even loaded


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


# ----------------------------------------------------------------------------- classifier: llm


def test_llm_letter_logprobs_are_renormalised_over_the_categories(default_config) -> None:  # type: ignore[no-untyped-def]
    from coe.types import ExpertAnswer
    from routers.category.config import LLMClassifierConfig
    from routers.category.llm_classifier import LLMClassifier, LLMClassifierError

    clf = LLMClassifier(LLMClassifierConfig(expert="coder"), default_config.router.categories, 1.0)
    # The shape llama-server returns: the sampled token and the unconstrained top alternatives.
    raw = [{"token": "B", "logprob": -1.2, "top_logprobs": [
        {"token": "Once", "logprob": -0.5}, {"token": "B", "logprob": -1.2}, {"token": " A", "logprob": -2.0},
    ]}]  # fmt: skip
    z, from_model = clf.letter_logprobs(ExpertAnswer(expert="coder", text="B", logprobs=raw))
    p = np.exp(z)
    assert from_model and p.sum() == pytest.approx(1.0)
    assert p[1] > p[0] > p[2]  # B (math) > A (code) > C (general: absent, put below the least likely seen)
    z, from_model = clf.letter_logprobs(ExpertAnswer(expert="coder", text="C"))
    assert not from_model and np.argmax(z) == 2  # no log-probabilities: a smoothed vote for the answer
    with pytest.raises(LLMClassifierError, match="not one of A, B, C"):
        clf.letter_logprobs(ExpertAnswer(expert="coder", text="Sure!"))


def test_llm_classifier_without_expert_block_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from coe.errors import ConfigError

    path = tmp_path / "experts.yaml"
    path.write_text(DEFAULT_REGISTRY.read_text().replace("classifier: centroid", "classifier: llm"))
    with pytest.raises(ConfigError, match=r"router\.classifier: classifier llm needs a router\.llm block"):
        load_config(path)


async def test_llm_classifier_failure_falls_back_to_the_examples(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = llm_registry(tmp_path, "  down: {endpoint: 'http://127.0.0.1:9/v1', retries: 0, timeout_s: 5}\n")
    coe = CoE(config)
    try:
        [decision] = await coe.router.aroute(
            [Request.from_input("Write a Python function that reverses a string")], coe.call_expert
        )
    finally:
        await coe.aclose()
    assert decision.expert == "coder" and decision.category == "code"  # the centroid still routes
    assert decision.reason.startswith("llm classifier failed (expert 'down' failed")
    assert "llm_error" in decision.details


def _with_router_max_tokens(tmp_path, value: str) -> Path:  # type: ignore[no-untyped-def]
    text, count = re.subn(r"(?m)^  max_tokens: .*$", f"  max_tokens: {value}", DEFAULT_REGISTRY.read_text())
    assert count == 1  # the default registry sets router.max_tokens
    path = tmp_path / f"experts-{value}.yaml"
    path.write_text(text)
    return path


def test_router_max_tokens_routes_on_the_head_of_the_prompt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    head = "Write a Python function that returns the nth Fibonacci number, please."
    tails = [
        " " + "Once upon a time a princess lived in a castle by the sea. " * 8,
        " What is 17 times 23? " * 8,
    ]
    prompts = [head + tail for tail in tails]
    truncated = CoE(load_config(_with_router_max_tokens(tmp_path, "12"))).route(prompts)
    assert truncated[0].scores == truncated[1].scores  # only the first 12 tokens were read
    assert truncated[0].category == "code"
    whole = CoE(load_config(_with_router_max_tokens(tmp_path, "null"))).route(prompts)
    assert whole[0].scores != whole[1].scores  # without it the tails move the decision


def test_router_max_tokens_beside_an_artefact_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from coe.errors import ConfigError

    (tmp_path / "router.npz").write_bytes(b"")
    path = _with_router_max_tokens(tmp_path, "64")
    path.write_text(path.read_text().replace("  classifier: centroid", "  model: router.npz"))
    with pytest.raises(ConfigError, match=r"router\.max_tokens: an artefact routes with the truncation"):
        load_config(path)


# ------------------------------------------------------------------ calibration and the scope floor

TWO_TOPICS = """\
version: 1
experts:
  coder: {endpoint: "http://127.0.0.1:9/v1"}
  cook: {endpoint: "http://127.0.0.1:9/v1"}
  general: {endpoint: "http://127.0.0.1:9/v1"}
router:
  classifier: CLASSIFIER
  categories:
    code:
      expert: coder
      description: Programming questions about Python code
      examples: ["How do I reverse a list in Python?", "Why does my Python script raise a KeyError?",
                 "How do I read a CSV file in Python?", "What does the yield keyword do in Python?"]
    cooking:
      expert: cook
      description: Cooking and recipes
      examples: ["How long should I boil an egg?", "What can I cook with rice and beans?",
                 "How do I make pizza dough rise?", "What is a good recipe for pancakes?"]
  fallback: {expert: general}
"""


def _category_router(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    from routers.category.router import CategoryRouter

    path = tmp_path / "experts.yaml"
    path.write_text(text)
    return CategoryRouter.from_config(load_config(path))


@pytest.mark.parametrize("classifier", ["centroid", "knn"])
def test_a_prompt_close_to_no_category_falls_back_saying_why(tmp_path: Path, classifier: str) -> None:
    router = _category_router(tmp_path, TWO_TOPICS.replace("CLASSIFIER", classifier))
    prompts = ["Who won the 1998 World Cup?", "Write a python function to reverse a list"]
    sport, code = router.route([Request.from_input(p) for p in prompts])
    assert sport.fallback and sport.expert == "general"
    floor = sport.details["floor"]
    assert re.search(
        rf"no category is close: top similarity 0\.\d\d < floor {floor:.2f} \(fitted", sport.reason
    )
    assert not code.fallback and code.expert == "coder"
    assert code.details["closeness"] >= code.details["floor"]


README_REGISTRY = """
version: 1
experts:
  coder: {endpoint: "http://127.0.0.1:9/v1"}
  general: {endpoint: "http://127.0.0.1:9/v1"}
router:
  type: category
  classifier: CLASSIFIER
  categories:
    code: {expert: coder, description: Programming questions, examples: ["Implement binary search in C++."]}
    general: {expert: general, description: Everyday questions, examples: ["Why is the sky blue?"]}
  fallback: {expert: general, min_confidence: 0.45}
"""


@pytest.mark.parametrize("classifier", ["centroid", "knn"])
def test_nonsense_falls_back_even_where_it_is_as_close_as_real_prompts(
    tmp_path: Path, classifier: str
) -> None:
    """The README's registry: MiniLM puts keyboard mash closer to "Everyday questions" than real
    prompts are to their category, so only the words tell it apart."""
    router = _category_router(tmp_path, README_REGISTRY.replace("CLASSIFIER", classifier))
    mash, foreign = router.route([Request.from_input(p) for p in ["asdfgh qwerty", "Wie spät ist es heute?"]])
    assert mash.fallback and mash.expert == "general"
    assert mash.reason.startswith("no word of the prompt is known to the encoder (asdfgh, qwerty)")
    assert mash.details["unknown_words"] == ["asdfgh", "qwerty"]
    assert "unknown_words" not in foreign.details  # "ist", "es": one known word is enough


def test_the_floor_can_be_set_in_the_registry(tmp_path: Path) -> None:
    text = TWO_TOPICS.replace("CLASSIFIER", "centroid")
    strict = _category_router(
        tmp_path, text.replace("{expert: general}", "{expert: general, min_similarity: 0.95}")
    )
    [d] = strict.route([Request.from_input("How do I reverse a list in Python?!")])
    assert d.fallback and "< floor 0.95 (fallback.min_similarity)" in d.reason
    off = _category_router(
        tmp_path, text.replace("{expert: general}", "{expert: general, min_similarity: 0}")
    )
    [d] = off.route([Request.from_input("asdfgh qwerty")])
    assert "floor" not in d.details and "no category is close" not in d.reason
    assert "unknown_words" not in d.details  # 0 turns the whole scope check off


@pytest.mark.parametrize("classifier", ["centroid", "knn"])
def test_a_few_separable_examples_cannot_make_the_confidence_extreme(tmp_path: Path, classifier: str) -> None:
    """Leave-one-out on four examples that all come out right used to drive the temperature to the
    bottom of its grid (p = 1.00 for anything); the prior keeps it where the encoder's scale is."""
    text = TWO_TOPICS.replace("CLASSIFIER", classifier).replace(
        "{expert: general}", "{expert: general, min_similarity: 0}"
    )
    router = _category_router(tmp_path, text)
    assert router.classifier.temperature > 0.03
    [d] = router.route([Request.from_input("What is the best way to learn?")])
    assert d.confidence < 0.99


def test_the_same_registry_is_fitted_once(tmp_path: Path) -> None:
    text = TWO_TOPICS.replace("CLASSIFIER", "centroid")
    first = _category_router(tmp_path, text)
    assert _category_router(tmp_path, text).model is first.model
    other = _category_router(tmp_path, text.replace("pancakes", "waffles"))
    assert other.model is not first.model
