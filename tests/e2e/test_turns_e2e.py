"""An answer ends where the model starts a new turn, and no turn marker reaches it, for both default
experts: ``general`` (Gemma-3-270M, a base model, llama.cpp's built-in ``gemma`` template) and
``coder`` (SmolLM2-135M-Instruct, its GGUF's own ChatML template). See coe/experts/templates.py."""

from __future__ import annotations

import httpx
import pytest

from coe import CoE, Request
from coe.experts.templates import TURN_MARKERS, turn_markers

pytestmark = pytest.mark.e2e
EVERY_MARKER = {m for markers in TURN_MARKERS.values() for m in markers}
EXPERTS = ["general", "coder"]


def _marker_token(coe: CoE, expert: str) -> int:
    """The token id of the expert's turn-start marker, asked of its own llama-server."""
    start = turn_markers(coe.config.experts[expert])[0]
    base = coe.run(coe.pool.url_for(expert)).removesuffix("/v1")
    tokens = httpx.post(base + "/tokenize", json={"content": start, "parse_special": True}, timeout=30)
    (token,) = tokens.json()["tokens"]  # one special token, not its characters
    return int(token)


@pytest.mark.parametrize("expert", EXPERTS)
def test_no_turn_marker_reaches_an_answer(coe_default: CoE, expert: str) -> None:
    assert turn_markers(coe_default.config.experts[expert])  # both formats are known
    for prompt in ("Tell me a joke", "Hi! How are you today?", "What is the capital of France?"):
        answer = coe_default.ask(prompt, expert=expert, max_tokens=96)
        assert not [m for m in EVERY_MARKER if m in answer.text], answer.text


@pytest.mark.parametrize("expert", EXPERTS)
def test_an_answer_ends_where_the_model_opens_a_new_turn(coe_default: CoE, expert: str) -> None:
    """A logit bias makes the model open a new turn at once (what a base model does on its own, at
    some point of a long answer): the answer ends there, empty, with finish_reason stop, streamed or
    not. Before, the marker came out as nothing and the role word and the next turn leaked."""
    bias = {"max_tokens": 32, "temperature": 0.0, "logit_bias": [[_marker_token(coe_default, expert), 30]]}
    answer = coe_default.run(
        coe_default.call_expert(expert, Request.from_input("Tell me a joke", params=bias))
    )
    assert answer.ok and answer.finish_reason == "stop" and answer.text == "", answer

    async def stream() -> list[str]:
        return [
            e.text
            async for e in coe_default.astream("Tell me a joke", expert=expert, **bias)
            if e.type == "delta"
        ]

    assert "".join(coe_default.run(stream())) == ""
