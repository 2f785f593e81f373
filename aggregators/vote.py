"""Majority vote over the final answers of the recruited experts (option letters or numbers).

Each answer's final answer is extracted (``coe.answers``); the most common one wins, a tie goes
to the answer backed by more router weight. The winning answer is returned as its highest-weighted
voter wrote it, unchanged. When nothing can be extracted (free text, code), the highest-weighted
expert's answer stands. No extra LLM call, so voting costs only the experts' answers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aggregators.support import finish, prepare
from coe.answers import extract_for_prompt, majority
from coe.config.routing import AggregatorConfig
from coe.protocols import Context
from coe.types import Answer, ExpertAnswer, Request


class VoteConfig(AggregatorConfig):
    answer: Literal["auto", "choice", "number"] = Field(
        "auto", description="vote: what to extract (auto: option letters when the prompt lists options)"
    )


class VoteAggregator:
    name = "vote"
    Config = VoteConfig

    def __init__(self, answer: Literal["auto", "choice", "number"] = "auto") -> None:
        self.answer = answer

    @classmethod
    def from_config(cls, cfg: VoteConfig) -> VoteAggregator:
        return cls(cfg.answer)

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer:
        missing, ranked = prepare(answers, ctx)
        extracted = [(a.expert, extract_for_prompt(request.text, a.text, self.answer)) for a in ranked]
        winner, votes = majority(extracted, ctx.decision.weights)
        detail: dict[str, object] = {
            "extracted": [{"expert": name, "answer": value} for name, value in extracted],
            "votes": {answer: len(voters) for answer, voters in votes.items()},
            "winner": winner,
        }
        if winner is None:
            chosen = ranked[0]
            detail["rule"] = "no final answer could be extracted: the highest-weighted expert's answer stands"
        else:
            chosen = next(a for a, (_, value) in zip(ranked, extracted, strict=True) if value == winner)
            tied = sorted(len(v) for v in votes.values())[-2:]
            close = len(tied) == 2 and tied[0] == tied[1]
            detail["rule"] = "tie broken by router weight" if close else "majority"
        return finish(ctx, self.name, chosen, answers, missing, detail)
