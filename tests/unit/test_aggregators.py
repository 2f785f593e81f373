"""Answer extraction and the vote/rank/synthesize logic that needs no model (the same aggregators
run against real llama.cpp experts in test_aggregators_e2e.py)."""

from __future__ import annotations

import pytest

from aggregators.rank import parse_choice
from aggregators.vote import VoteAggregator
from coe.answers import extract_choice, extract_for_prompt, extract_number, option_letters
from coe.protocols import Context
from coe.types import ExpertAnswer, Request, RouteDecision, Trace, Usage
from routers.skills.keywords import parse_keywords
from routers.skills.qa import gold_value, grade

MC = "Which planet is red?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn"


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("C\n", "C"),
        ("The answer is (B).", "B"),
        ("**Answer: D**", "D"),
        ("B) Mars", "B"),
        ("I think the correct answer is C because", "C"),
        ("\\boxed{A}", "A"),
        ("Answer: (A) Venus. Option B is wrong", "A"),  # an answer marker beats a mentioned option
        ("A boat is not an answer", None),  # a sentence starting with "A" is not option A
        ("I do", None),
        ("The answer is (E)", None),  # not one of the prompt's options
    ],
)
def test_option_letters_are_extracted_strictly(text: str, letter: str | None) -> None:
    assert extract_choice(text, "ABCD") == letter


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She sells 9 eggs at $2.\n#### 18", "18"),
        ("The answer is $1,234.50", "1234.5"),
        ("\\boxed{42}", "42"),
        ("answer: 12.0", "12"),
        ("so 3 + 4 = 7", "7"),
        ("no number here", None),
    ],
)
def test_numbers_are_extracted_and_normalised(text: str, number: str | None) -> None:
    assert extract_number(text) == number


def test_the_prompt_decides_what_is_extracted() -> None:
    assert option_letters(MC) == "ABCD"
    assert option_letters("The options are: (A) one (B) two (C) three") == "ABC"
    assert option_letters("Scurvy? A) Vitamin A B) Vitamin B12 C) Vitamin C D) Vitamin D") == "ABCD"
    assert option_letters("Plan A) is fine") == ""
    assert extract_for_prompt(MC, "The answer is B") == "B"
    # no options in the prompt: only an explicitly marked number counts, never a stray one
    assert extract_for_prompt("Write a function", "def f(x):\n    return x + 1") is None
    assert extract_for_prompt("How many eggs?", "She has 3 hens.\n#### 18") == "18"


def test_graders_share_the_extraction() -> None:
    assert gold_value("number", "Janet sells 9 eggs\n#### 18") == "18"
    assert gold_value("mc", "b") == "B"
    assert grade("mc", "The answer is (B)", "B") and not grade("mc", "The answer is (C)", "B")
    assert grade("number", "... The answer is 18.", "18")
    assert grade("exact", "  Paris. ", gold_value("exact", "paris"))  # type: ignore[arg-type]


def ctx_for(weights: dict[str, float]) -> Context:
    decision = RouteDecision(router="t", experts=list(weights), fanout=len(weights), weights=weights)

    async def no_call(name: str, request: Request) -> ExpertAnswer:
        raise AssertionError("vote makes no LLM call")

    return Context(decision=decision, trace=Trace(), call_expert=no_call)


def answer(expert: str, text: str = "", error: str | None = None) -> ExpertAnswer:
    return ExpertAnswer(expert=expert, text=text, error=error, usage=Usage(total_tokens=10))


async def test_vote_majority_wins_and_the_winner_is_returned_unchanged() -> None:
    ctx = ctx_for({"a": 0.5, "b": 0.3, "c": 0.2})
    answers = [answer("a", "The answer is (A)"), answer("b", "B) Mars, clearly"), answer("c", "B")]
    result = await VoteAggregator().combine(Request.from_input(MC), answers, ctx)
    assert result.text == "B) Mars, clearly" and result.expert == "b"  # b outweighs c among B voters
    assert ctx.trace.aggregation is not None
    assert ctx.trace.aggregation.detail["votes"] == {"A": 1, "B": 2}
    assert ctx.trace.aggregation.detail["rule"] == "majority"
    assert result.usage.total_tokens == 30  # every answer the request paid for


async def test_vote_tie_goes_to_router_weight_and_missing_experts_are_recorded() -> None:
    ctx = ctx_for({"a": 0.2, "b": 0.5, "c": 0.3})
    answers = [answer("a", "A"), answer("b", "The answer is C"), answer("c", error="no answer within 1s")]
    result = await VoteAggregator().combine(Request.from_input(MC), answers, ctx)
    assert result.expert == "b"
    agg = ctx.trace.aggregation
    assert agg is not None and agg.answered == ["a", "b"] and agg.missing == {"c": "no answer within 1s"}
    assert agg.detail["rule"] == "tie broken by router weight" and agg.chosen == "b"


async def test_vote_without_extractable_answers_keeps_the_top_weighted_one() -> None:
    ctx = ctx_for({"a": 0.3, "b": 0.7})
    answers = [answer("a", "def f(): pass"), answer("b", "def g(): return 1")]
    result = await VoteAggregator().combine(Request.from_input("Write a function g"), answers, ctx)
    assert result.text == "def g(): return 1"
    assert ctx.trace.aggregation is not None and ctx.trace.aggregation.detail["winner"] is None


@pytest.mark.parametrize(
    ("reply", "pick"), [("2", 2), ("Candidate 1.", 1), ("[3]", 3), ("7", None), ("", None)]
)
def test_judge_reply_parsing(reply: str, pick: int | None) -> None:
    assert parse_choice(reply, 3) == pick


@pytest.mark.parametrize(
    ("reply", "keywords"),
    [
        ('{"keywords": ["Python programming", "algorithms"]}', ["python programming", "algorithms"]),
        ('{"keywords": ["<b>", "x", "algebra"]}', ["algebra"]),  # the same filter as text replies
        ("Keywords: algebra, probability", ["algebra", "probability"]),
        ('{"keywords": ["alg', ["alg"]),  # cut at max_tokens: read as text
    ],
)
def test_annotator_replies_parse_as_json_or_text(reply: str, keywords: list[str]) -> None:
    assert parse_keywords(reply) == keywords
