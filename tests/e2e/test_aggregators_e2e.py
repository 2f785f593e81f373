"""The aggregators against real llama.cpp experts (SmolLM2 and Gemma, short answers), through the
skills router and the orchestrator's fan-out; stubs only inject a hanging and a failing expert."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aggregators.rank import RankAggregator
from aggregators.synthesize import SynthesizeAggregator
from aggregators.vote import VoteAggregator
from coe import CoE, Request
from coe.config import load_config
from coe.protocols import Context
from coe.types import ExpertAnswer, RouteDecision, Trace
from tests.support.paths import DEFAULT_REGISTRY
from tests.support.skills_fixtures import SCORES, hand_profile, skills_registry
from tests.support.stub_server import stub_server

pytestmark = pytest.mark.e2e

MC = (
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn\n\n"
    "Which option is correct? Reply with its letter, then one sentence of explanation."
)
SHORT = {"max_tokens": 24, "temperature": 0.0}


@pytest.fixture(scope="module")
def coe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoE]:
    """Both real experts recruited for every prompt (an even profile, top_p 0.9); a hanging stub
    ``slow`` and a failing stub ``broken`` for the fault tests; synthesis by the coder."""
    even = {name: {w: 2.0 for w in SCORES["coder"]} for name in SCORES}
    with stub_server("hang") as (slow, _), stub_server("500") as (broken, _):
        extra = "".join(
            f"  {n}:\n    endpoint: {u}\n    retries: 0\n" for n, u in (("slow", slow), ("broken", broken))
        )
        path = skills_registry(
            tmp_path_factory.mktemp("agg"),
            "k: dynamic\n    top_p: 0.9",
            extra_experts=extra,
            aggregator="{type: synthesize, expert: coder, max_tokens: 32, timeout_s: 60}",
            profile=hand_profile(load_config(DEFAULT_REGISTRY), even),
        )
        coe = CoE.from_yaml(path)
        yield coe
        coe.close()


def answers_of(coe: CoE, experts: list[str], prompt: str = MC) -> tuple[Request, list[ExpertAnswer], Context]:
    request = Request.from_input(prompt, params=SHORT)

    async def ask_each() -> list[ExpertAnswer]:
        return list(await asyncio.gather(*(coe.call_expert(e, request) for e in experts)))

    answers = coe.run(ask_each())
    weights = {e: round(1.0 - 0.1 * i, 2) for i, e in enumerate(experts)}
    decision = RouteDecision(router="test", experts=experts, fanout=len(experts), weights=weights)
    return request, list(answers), Context(decision=decision, trace=Trace(), call_expert=coe.call_expert)


def test_skills_recruitment_fans_out_and_synthesises(coe: CoE) -> None:
    answer = coe.ask(MC, **SHORT)
    trace = answer.trace
    assert trace.decision is not None and trace.decision.router == "skills"
    assert sorted(trace.decision.recruited) == ["coder", "general"]
    assert trace.aggregation is not None and sorted(trace.aggregation.answered) == ["coder", "general"]
    assert trace.aggregation.detail["writer"] == "coder" and trace.aggregation.detail["rule"] == "synthesised"
    assert answer.expert == "coder" and answer.text.strip()
    assert {a.expert for a in trace.attempts} == {"coder", "general"} and all(a.ok for a in trace.attempts)
    assert answer.usage.completion_tokens > 0


def test_synthesis_streams_token_by_token(coe: CoE) -> None:
    async def collect() -> list:  # type: ignore[type-arg]
        return [e async for e in coe.astream(MC, **SHORT)]

    events = coe.run(collect())
    deltas = [e for e in events if e.type == "delta"]
    done = events[-1]
    assert done.type == "done" and done.answer is not None
    assert len(deltas) > 1  # the writer's tokens, not one block
    assert "".join(d.text for d in deltas) == done.answer.text
    agg = done.answer.trace.aggregation
    assert agg is not None and agg.detail["rule"] == "synthesised (streamed)"


def test_vote_over_real_answers(coe: CoE) -> None:
    request, answers, ctx = answers_of(coe, ["coder", "general"])
    result = coe.run(VoteAggregator().combine(request, answers, ctx))
    agg = ctx.trace.aggregation
    assert agg is not None and sorted(agg.answered) == ["coder", "general"]
    assert [e["expert"] for e in agg.detail["extracted"]] == ["coder", "general"]
    assert result.text in {a.text for a in answers}  # a vote returns an answer unchanged
    if agg.detail["winner"] is not None:
        assert agg.detail["winner"] in {e["answer"] for e in agg.detail["extracted"]}


def test_rank_returns_one_candidate_unchanged(coe: CoE) -> None:
    request, answers, ctx = answers_of(coe, ["coder", "general"])
    result = coe.run(RankAggregator(expert="coder").combine(request, answers, ctx))
    detail = ctx.trace.aggregation.detail  # type: ignore[union-attr]
    assert result.text in {a.text for a in answers}
    assert detail["judge"] == "coder" and detail["calls"] == 1
    assert detail["rule"] == "judge's choice" or detail["rule"].startswith("judge gave no usable choice")


def test_a_hanging_expert_is_cut_at_the_timeout_and_reported_missing(coe: CoE) -> None:
    coe.ask(MC, expert="coder", **SHORT)  # warm: the timeout must not have to cover a cold start
    coe.config.aggregator.timeout_s = 3.0
    try:
        decision = RouteDecision(
            router="test", experts=["coder", "slow"], fanout=2, weights={"coder": 0.4, "slow": 0.6}
        )
        answer = coe.run(coe.aask(MC, decision=decision, **SHORT))
    finally:
        coe.config.aggregator.timeout_s = 60
    agg = answer.trace.aggregation
    assert agg is not None and agg.answered == ["coder"]
    assert agg.missing == {"slow": "no answer within 3s"}
    assert answer.expert == "coder"  # one answer arrived: returned as is, no synthesis call
    assert agg.detail["calls"] == 0


def test_failed_synthesis_keeps_the_top_weighted_answer(coe: CoE) -> None:
    request, answers, ctx = answers_of(coe, ["general", "coder"])
    result = coe.run(SynthesizeAggregator(expert="broken").combine(request, answers, ctx))
    detail = ctx.trace.aggregation.detail  # type: ignore[union-attr]
    assert result.expert == "general" and result.text == answers[0].text
    assert detail["rule"].startswith("synthesis by 'broken' failed") and "HTTP 500" in detail["rule"]
