"""An LLM writes one answer from several (Mixture-of-Agents' aggregate-and-synthesise step).

The writer is told it has answers from several models, that some may be wrong, and that it must
write one better answer; the answers follow, numbered, then the user's conversation. The writer is
``aggregator.expert``, else the aggregator the profile picked (the expert best at choosing the right
answer among mixed candidates), else the highest-weighted answerer. One answer arrived: it is
returned unchanged (no call). The writer fails: the highest-weighted answer stands, and the trace
says why. ``stream`` streams the writer's tokens, so ``CoE.astream`` does too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aggregators.support import WriterConfig, finish, numbered, prepare, total_usage, writer
from coe.errors import CoEError
from coe.protocols import Context
from coe.types import Answer, ExpertAnswer, Message, Request, StreamEvent, Usage

SYNTHESIS_PROMPT = (
    "You are given answers from several AI models to the user's latest message. Some of them may "
    "be wrong, biased or incomplete. Judge them critically and write one answer that is better than "
    "each of them: correct, complete and clear. Do not copy an answer blindly and do not mention the "
    "models. If the question asks for an option letter or a number, end with 'The answer is X'."
    "\n\nAnswers from the models:"
)
MAX_CHARS_PER_ANSWER = 2000


@dataclass
class _Plan:
    missing: dict[str, str]
    ranked: list[ExpertAnswer]
    writer: str
    why: str


class SynthesizeAggregator:
    name = "synthesize"
    Config = WriterConfig

    def __init__(self, expert: str | None = None, max_tokens: int | None = None) -> None:
        self.expert = expert
        self.max_tokens = max_tokens

    @classmethod
    def from_config(cls, cfg: WriterConfig) -> SynthesizeAggregator:
        return cls(cfg.expert, cfg.max_tokens)

    def _plan(self, answers: list[ExpertAnswer], ctx: Context) -> _Plan:
        missing, ranked = prepare(answers, ctx)
        name, why = writer(self.expert, ctx, ranked)
        return _Plan(missing, ranked, name, why)

    def synthesis_request(self, request: Request, candidates: list[ExpertAnswer]) -> Request:
        conversation = [m for m in request.messages if m.role != "system"]
        params = dict(request.params)
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        listed = numbered(candidates, MAX_CHARS_PER_ANSWER)
        system = Message(role="system", content=f"{SYNTHESIS_PROMPT}\n\n{listed}")
        return Request(messages=[system, *conversation], params=params)

    def _detail(self, plan: _Plan, **extra: object) -> dict[str, object]:
        return {
            "writer": plan.writer,
            "writer_chosen_by": plan.why,
            "candidates": [a.expert for a in plan.ranked],
            **extra,
        }

    def _unchanged(
        self, plan: _Plan, ctx: Context, answers: list[ExpertAnswer], rule: str, calls: int = 1
    ) -> Answer:
        detail = self._detail(plan, rule=rule, calls=calls)
        return finish(ctx, self.name, plan.ranked[0], answers, plan.missing, detail)

    async def combine(self, request: Request, answers: list[ExpertAnswer], ctx: Context) -> Answer:
        plan = self._plan(answers, ctx)
        if len(plan.ranked) == 1:
            rule = "one answer arrived: returned unchanged, no synthesis"
            return self._unchanged(plan, ctx, answers, rule, calls=0)
        result = await ctx.call_expert(plan.writer, self.synthesis_request(request, plan.ranked))
        if not result.ok or not result.text.strip():
            why = result.error or "empty synthesis"
            return self._unchanged(plan, ctx, answers, f"synthesis by {plan.writer!r} failed ({why})")
        usage = total_usage(plan.ranked, result.usage)
        detail = self._detail(plan, rule="synthesised", calls=1)
        return finish(ctx, self.name, result, answers, plan.missing, detail, usage=usage)

    async def stream(
        self, request: Request, answers: list[ExpertAnswer], ctx: Context
    ) -> AsyncIterator[StreamEvent]:
        plan = self._plan(answers, ctx)
        if len(plan.ranked) == 1 or ctx.stream_expert is None:
            answer = await self.combine(request, answers, ctx)
            yield StreamEvent(type="delta", text=answer.text)
            yield StreamEvent(type="done", answer=answer)
            return
        parts: list[str] = []
        usage, model = Usage(), None
        try:
            async for event in ctx.stream_expert(plan.writer, self.synthesis_request(request, plan.ranked)):
                if event.type == "delta" and event.text:
                    parts.append(event.text)
                    yield event
                elif event.type == "done" and event.answer is not None:
                    usage, model = event.answer.usage, event.answer.model
        except CoEError as exc:
            if parts:
                raise
            failure: str | None = str(exc)
        else:
            failure = None if "".join(parts).strip() else "empty synthesis"
        if failure is not None:
            answer = self._unchanged(plan, ctx, answers, f"synthesis by {plan.writer!r} failed ({failure})")
            yield StreamEvent(type="delta", text=answer.text)
            yield StreamEvent(type="done", answer=answer)
            return
        result = ExpertAnswer(expert=plan.writer, model=model, text="".join(parts), usage=usage)
        detail = self._detail(plan, rule="synthesised (streamed)", calls=1)
        answer = finish(
            ctx, self.name, result, answers, plan.missing, detail, usage=total_usage(plan.ranked, usage)
        )
        yield StreamEvent(type="done", answer=answer)
