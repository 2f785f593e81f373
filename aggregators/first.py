"""The default aggregator: the first answer that arrived is the answer (one expert per request)."""

from __future__ import annotations

from coe.protocols import Context
from coe.types import Answer, ExpertAnswer, Request


class FirstAggregator:
    name = "first"

    @classmethod
    def from_options(cls, options: dict[str, object]) -> FirstAggregator:
        return cls()

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer:
        best = next(a for a in answers if a.ok)
        return Answer(text=best.text, expert=best.expert, model=best.model, usage=best.usage, trace=ctx.trace)
