"""A judge picks the best of the candidate answers, which is returned unchanged (LLM-Blender's
ranking idea, with one judge call instead of pairwise comparisons).

Cheaper than synthesis: the judge writes a number, not an answer (held to ``{"choice": k}`` by a JSON
schema where its engine enforces one). The judge is ``aggregator.expert``,
else the profile's aggregator, else the highest-weighted answerer. A reply without a valid candidate
number, or a failed judge, leaves the highest-weighted answer in place; the trace says which.
"""

from __future__ import annotations

import re

from aggregators.support import WriterConfig, finish, numbered, prepare, total_usage, writer
from coe.protocols import Context
from coe.types import Answer, ExpertAnswer, JsonSchemaSpec, Message, Request, ResponseFormat

JUDGE_PROMPT = (
    "Below are {n} candidate answers to the question that follows them. Decide which candidate "
    "answers it best: correct first, then complete and clear. Reply with the candidate's number "
    "only, one of: {choices}."
)
JUDGE_MAX_TOKENS = 12  # '{"choice": 3}' and a little slack


def choice_format(n: int) -> ResponseFormat:
    """The judge's reply as ``{"choice": k}``, k one of 1..n: an engine that enforces schemas cannot
    answer anything else (a small judge otherwise tends to answer the question instead)."""
    schema = {
        "type": "object",
        "properties": {"choice": {"type": "integer", "enum": list(range(1, n + 1))}},
        "required": ["choice"],
        "additionalProperties": False,
    }
    return ResponseFormat(type="json_schema", json_schema=JsonSchemaSpec(name="choice", schema=schema))


def parse_choice(text: str, n: int) -> int | None:
    """The first candidate number 1..n in the judge's reply ("[2]", "Candidate 2", "2")."""
    for match in re.finditer(r"\d+", text):
        value = int(match.group())
        if 1 <= value <= n:
            return value
    return None


class RankAggregator:
    name = "rank"
    Config = WriterConfig

    def __init__(self, expert: str | None = None, max_tokens: int | None = None) -> None:
        self.expert = expert
        self.max_tokens = max_tokens or JUDGE_MAX_TOKENS

    @classmethod
    def from_config(cls, cfg: WriterConfig) -> RankAggregator:
        return cls(cfg.expert, cfg.max_tokens)

    def judge_request(self, request: Request, candidates: list[ExpertAnswer]) -> Request:
        n = len(candidates)
        listed = numbered(candidates)
        instruction = JUDGE_PROMPT.format(n=n, choices=", ".join(str(i) for i in range(1, n + 1)))
        content = f"{instruction}\n\n{listed}\n\nQuestion:\n{request.text}\n\nThe best candidate is number:"
        return Request(
            messages=[Message(role="user", content=content)],
            params={"max_tokens": self.max_tokens, "temperature": 0.0},
            response_format=choice_format(n),
        )

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer:
        missing, ranked = prepare(answers, ctx)
        judge, why = writer(self.expert, ctx, ranked)
        detail: dict[str, object] = {
            "judge": judge,
            "judge_chosen_by": why,
            "candidates": [a.expert for a in ranked],
        }
        if len(ranked) == 1:
            detail.update(rule="one answer arrived: returned unchanged, no judge call", calls=0)
            return finish(ctx, self.name, ranked[0], answers, missing, detail)
        verdict = await ctx.call_expert(judge, self.judge_request(request, ranked))
        usage = total_usage(ranked, verdict.usage)
        pick = parse_choice(verdict.text, len(ranked)) if verdict.ok else None
        detail.update(calls=1, judge_reply=verdict.text.strip()[:80] if verdict.ok else None)
        if pick is None:
            why_not = (
                verdict.error if not verdict.ok else f"no candidate number in {verdict.text.strip()[:40]!r}"
            )
            detail["rule"] = f"judge gave no usable choice ({why_not}): highest-weighted answer stands"
            return finish(ctx, self.name, ranked[0], answers, missing, detail, usage=usage)
        detail.update(rule="judge's choice", choice=pick)
        return finish(ctx, self.name, ranked[pick - 1], answers, missing, detail, usage=usage)
