"""Two-step routing on the default registry with the real MiniLM encoder (no LLM involved)."""

from __future__ import annotations

import pytest

from coe import CoE, Request
from tests.support.registries import llm_registry


@pytest.mark.e2e
async def test_llm_classifier_asks_a_real_expert_for_calibrated_probabilities(tmp_path) -> None:  # type: ignore[no-untyped-def]
    coe = CoE(llm_registry(tmp_path))
    prompts = ["Write a Python function that reverses a string", "What is 15% of 240?", "Tell me a story"]
    try:
        decisions = await coe.router.aroute([Request.from_input(p) for p in prompts], coe.call_expert)
        [dry] = coe.route(prompts[0])  # no generation: no llm call, and the reason says so
    finally:
        await coe.aclose()
    for d in decisions:
        assert d.details["classifier"] == "llm" and d.details["logprobs"] is True
        assert set(d.scores) == {"code", "math", "general"}
        assert sum(d.scores.values()) == pytest.approx(1.0, abs=1e-3)
    # The temperature was fitted on the categories' examples: within the grid, and the same for all.
    assert 0.1 <= decisions[0].details["temperature"] <= 10.0
    assert dry.details["classifier"] == "centroid" and "no llm call" in dry.reason
