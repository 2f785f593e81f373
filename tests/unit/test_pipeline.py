"""The pipeline's stages alone, each on a list of flows: a refusal stays on its own flow, the router is
asked once for a whole batch, and the one fallback rule (``next_candidate``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coe import CoE
from coe.config import CoEConfig
from coe.errors import ExpertError, NoCapableExpert
from coe.pipeline import Flow, next_candidate
from coe.pipeline.stages import Capable, Route
from coe.types import ExpertAnswer, Request, RouteDecision


def _decision(experts: list[str], fanout: int = 1) -> RouteDecision:
    return RouteDecision(router="test", experts=experts, fanout=fanout, reason="test")


def test_next_candidate_walks_the_candidates_after_the_recruited_ones_in_order() -> None:
    decision = _decision(["a", "b", "c", "d"], fanout=2)
    failed = [ExpertAnswer(expert="a", error="down"), ExpertAnswer(expert="b", error="down")]
    assert next_candidate(decision, failed) == "c"
    assert next_candidate(decision, [*failed, ExpertAnswer(expert="c", error="down")]) == "d"
    assert next_candidate(decision, [*failed, ExpertAnswer(expert="c", text="ok")]) is None
    everyone = [ExpertAnswer(expert=n, error="down") for n in "abcd"]
    assert next_candidate(decision, everyone) is None
    assert next_candidate(decision, [ExpertAnswer(expert="a", text="ok")]) is None


@pytest.fixture
def coe(default_config: CoEConfig) -> Iterator[CoE]:
    """A CoE of its own: the shared ``coe_default`` may run experts that other tests started."""
    with CoE(default_config) as fresh:
        yield fresh


def test_the_route_stage_refuses_only_the_flow_that_pins_an_unknown_expert(coe: CoE) -> None:
    flows = [
        Flow(Request.from_input("Write a Python function that reverses a string")),
        Flow(Request.from_input("hello", expert="nobody")),
        Flow(Request.from_input("Tell me a story", expert="general")),
        Flow(Request.from_input("What is the capital of France?")),
    ]
    coe.run(Route(coe.parts, coe.pipeline.answering.for_coe).run(flows))
    assert isinstance(flows[1].failure, ExpertError) and "no such expert" in str(flows[1].failure)
    assert flows[1].decision is None
    routed, pinned, general = flows[0].routed(), flows[2].routed(), flows[3].routed()
    assert (routed.router, routed.expert) == ("category", "coder")
    assert (pinned.router, pinned.experts) == ("pinned", ["general"])
    assert general.category == "general"
    assert all(f.trace.decision is f.decision for f in flows if f.failure is None)
    assert not coe.pool.running  # routing starts no expert


def test_the_capability_stage_keeps_the_refusal_on_its_flow(coe: CoE) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    wants_vision = Request.from_input([{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}])
    plain = Request.from_input("hi")
    flows = [
        Flow(wants_vision, decision=_decision(["coder", "general"])),
        Flow(plain, decision=_decision(["coder"])),
    ]
    coe.run(Capable(coe.parts).run(flows))
    assert isinstance(flows[0].failure, NoCapableExpert) and "vision" in str(flows[0].failure)
    assert flows[1].failure is None and flows[1].routed().experts == ["coder"]


def test_a_single_request_raises_what_a_stage_refused(coe_default: CoE) -> None:
    with pytest.raises(ExpertError, match="no such expert"):
        coe_default.ask("hello", expert="nobody")
