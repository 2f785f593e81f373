"""The aggregators against real llama.cpp experts (SmolLM2 and Gemma, short answers), through the
skills router and the orchestrator's fan-out; stubs only inject a hanging and a failing expert."""

from __future__ import annotations

import asyncio
import json
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
from tests.support.stub_server import StubState, stub_server

pytestmark = pytest.mark.e2e

MC = (
    "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn\n\n"
    "Which option is correct? Reply with its letter, then one sentence of explanation."
)
SHORT = {"max_tokens": 24, "temperature": 0.0}


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, tuple[str, StubState]]]:
    """A stub ``slow`` that holds every request until it shuts down, a failing ``broken``, and an
    ``undecided`` judge whose reply names no candidate."""
    with (
        stub_server("hang", hang_s=600) as slow,
        stub_server("500") as broken,
        stub_server("ok", text="I cannot decide.") as undecided,
    ):
        yield {"slow": slow, "broken": broken, "undecided": undecided}


@pytest.fixture(scope="module")
def coe(stubs: dict[str, tuple[str, StubState]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoE]:
    """Both real experts recruited for every prompt (an even profile, top_p 0.9), the stubs for the
    fault tests; synthesis by the coder."""
    even = {name: {w: 2.0 for w in SCORES["coder"]} for name in SCORES}
    extra = "".join(f"  {n}:\n    endpoint: {url}\n    retries: 0\n" for n, (url, _) in stubs.items())
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


def test_rank_returns_the_judges_choice_unchanged(coe: CoE) -> None:
    """The real coder judges at temperature 0; its reply names a candidate, returned as it was."""
    request, answers, ctx = answers_of(coe, ["coder", "general"])
    result = coe.run(RankAggregator(expert="coder").combine(request, answers, ctx))
    detail = ctx.trace.aggregation.detail  # type: ignore[union-attr]
    assert detail["judge"] == "coder" and detail["calls"] == 1
    assert detail["rule"] == "judge's choice", detail
    assert json.loads(detail["judge_reply"]) == {"choice": detail["choice"]}  # held to the schema
    chosen = answers[detail["choice"] - 1]
    assert result.text == chosen.text and result.expert == chosen.expert


def test_rank_keeps_the_top_weighted_answer_when_the_judge_names_none(coe: CoE) -> None:
    request, answers, ctx = answers_of(coe, ["general", "coder"])
    result = coe.run(RankAggregator(expert="undecided").combine(request, answers, ctx))
    detail = ctx.trace.aggregation.detail  # type: ignore[union-attr]
    assert detail["rule"].startswith(
        "judge gave no usable choice (no candidate number in 'I cannot decide.')"
    )
    assert result.expert == "general" and result.text == answers[0].text


def test_a_hanging_expert_is_cut_at_the_timeout_and_reported_missing(
    coe: CoE, stubs: dict[str, tuple[str, StubState]]
) -> None:
    """``slow`` holds its request until the stub shuts down. The timeout is not a guess at how fast
    the real coder is: it is ten times what this very prompt took it just now (at least 5 s), and what
    is asserted is the behaviour: the answer comes back while slow's request is still open, slow is
    reported missing with that timeout, and coder's answer is returned as is."""
    warm = coe.ask(MC, expert="coder", **SHORT)  # also warms it: a cold start is not timed below
    timeout = round(max(5.0, 10 * warm.trace.timings_ms["expert:coder"] / 1000), 1)
    slow = stubs["slow"][1]
    coe.config.aggregator.timeout_s = timeout
    try:
        decision = RouteDecision(
            router="test", experts=["coder", "slow"], fanout=2, weights={"coder": 0.4, "slow": 0.6}
        )
        answer = coe.run(coe.aask(MC, decision=decision, **SHORT))
        assert slow.open == 1  # cut, not waited for: its request is still hanging
    finally:
        coe.config.aggregator.timeout_s = 60
    agg = answer.trace.aggregation
    assert agg is not None and agg.answered == ["coder"]
    assert agg.missing == {"slow": f"no answer within {timeout:g}s"}
    assert answer.expert == "coder" and answer.text == warm.text  # one answer: returned as is
    assert agg.detail["calls"] == 0  # no synthesis call


def test_failed_synthesis_keeps_the_top_weighted_answer(coe: CoE) -> None:
    request, answers, ctx = answers_of(coe, ["general", "coder"])
    result = coe.run(SynthesizeAggregator(expert="broken").combine(request, answers, ctx))
    detail = ctx.trace.aggregation.detail  # type: ignore[union-attr]
    assert result.expert == "general" and result.text == answers[0].text
    assert detail["rule"].startswith("synthesis by 'broken' failed") and "HTTP 500" in detail["rule"]
