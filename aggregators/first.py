"""The default aggregator: the first answer that arrived is the answer (one expert per request)."""

from __future__ import annotations

from coe.config.routing import AggregatorConfig
from coe.protocols import Context
from coe.types import Answer, ExpertAnswer, Request


class FirstAggregator:
    name = "first"

    Config = AggregatorConfig

    @classmethod
    def from_config(cls, cfg: AggregatorConfig) -> FirstAggregator:
        return cls()

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer:
        best = next(a for a in answers if a.ok)
        return Answer(
            text=best.text,
            expert=best.expert,
            model=best.model,
            usage=best.usage,
            trace=ctx.trace,
            tool_calls=best.tool_calls,
            finish_reason=best.finish_reason,
            logprobs=best.logprobs,
            reasoning=best.reasoning,
        )
