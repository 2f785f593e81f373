"""What every multi-answer aggregator needs: who answered and who did not, answers in order of
router weight, the request's total token usage, and which expert writes or judges (and its settings)."""

from __future__ import annotations

from pydantic import Field

from coe.config.base import Issue, RegistryView, unknown_experts
from coe.config.routing import AggregatorConfig
from coe.errors import AllExpertsFailed
from coe.protocols import Context
from coe.types import AggregationTrace, Answer, ExpertAnswer, Usage


class WriterConfig(AggregatorConfig):
    """``synthesize`` and ``rank``: an expert writes (or judges) once the answers are in."""

    expert: str | None = Field(
        None, description="synthesize/rank: the expert that writes or judges; default: the profile's pick"
    )
    max_tokens: int | None = Field(None, ge=1, description="synthesize/rank: token limit of that call")

    def check(self, config: RegistryView) -> list[Issue]:
        return unknown_experts(config, (("aggregator", "expert"), self.expert))


def arrived(answers: list[ExpertAnswer]) -> tuple[list[ExpertAnswer], dict[str, str]]:
    """The answers that arrived, and expert -> why for those that did not."""
    ok = [a for a in answers if a.answered]
    missing = {a.expert: a.error or "empty answer" for a in answers if not a.answered}
    return ok, missing


def prepare(answers: list[ExpertAnswer], ctx: Context) -> tuple[dict[str, str], list[ExpertAnswer]]:
    """(why the experts that did not answer did not, the answers that arrived by router weight)."""
    ok, missing = arrived(answers)
    if not ok:
        raise AllExpertsFailed(missing)
    return missing, by_weight(ok, ctx)


def by_weight(answers: list[ExpertAnswer], ctx: Context) -> list[ExpertAnswer]:
    """Highest router weight first; equal weights keep the order of ``decision.experts``."""
    weights = ctx.decision.weights
    order = {name: i for i, name in enumerate(ctx.decision.experts)}
    return sorted(answers, key=lambda a: (-weights.get(a.expert, 0.0), order.get(a.expert, len(order))))


def numbered(candidates: list[ExpertAnswer], max_chars: int = 1500) -> str:
    """Candidates as the synthesis and judge prompts show them, each cut to ``max_chars``."""
    return "\n\n".join(
        f"Candidate {i}:\n{a.text.strip()[:max_chars]}" for i, a in enumerate(candidates, start=1)
    )


def total_usage(answers: list[ExpertAnswer], *extra: Usage) -> Usage:
    """Everything this request cost: every expert that answered plus any aggregator call."""
    usages = [a.usage for a in answers] + list(extra)
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
    )


def writer(configured: str | None, ctx: Context, ranked: list[ExpertAnswer]) -> tuple[str, str]:
    """The expert that synthesises or judges, and why it was chosen: the configured one, else the
    aggregator the profile picked (``decision.details['aggregator']``), else the top-weighted answerer."""
    if configured:
        return configured, "aggregator.expert"
    picked = ctx.decision.details.get("aggregator")
    if isinstance(picked, str) and picked:
        return picked, "the profile's best aggregator"
    return ranked[0].expert, "highest router weight (no aggregator configured or profiled)"


def finish(
    ctx: Context,
    name: str,
    chosen: ExpertAnswer,
    answers: list[ExpertAnswer],
    missing: dict[str, str],
    detail: dict[str, object],
    text: str | None = None,
    usage: Usage | None = None,
) -> Answer:
    """Record the aggregation in the trace and build the Answer (``chosen``'s text unless given)."""
    ctx.trace.aggregation = AggregationTrace(
        aggregator=name,
        answered=[a.expert for a in answers if a.answered],
        missing=missing,
        chosen=chosen.expert,
        detail=detail,
    )
    return Answer(
        text=chosen.text if text is None else text,
        expert=chosen.expert,
        model=chosen.model,
        usage=usage or total_usage([a for a in answers if a.ok]),
        trace=ctx.trace,
        tool_calls=chosen.tool_calls if text is None else None,
        finish_reason=chosen.finish_reason,
        logprobs=chosen.logprobs if text is None else None,
        reasoning=chosen.reasoning if text is None else None,
    )
