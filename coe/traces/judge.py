"""``coe judge``: grade stored answers with an expert as an LLM judge, MT-Bench's single-answer
grading (Zheng et al., 2023, "Judging LLM-as-a-Judge"): the judge explains, then rates 1-10 as
``Rating: [[N]]``; the grade is N/10 and is written as a feedback row (source ``judge:EXPERT``).

Needs the answer texts: only traces recorded with ``traces.store_text: true`` can be judged.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from coe.traces.record import Feedback, TraceRecord, user_text

if TYPE_CHECKING:
    from coe.orchestrator import CoE

# MT-Bench's "single-v1" judge prompt (FastChat llm_judge/data/judge_prompts.jsonl).
SYSTEM = "You are a helpful assistant."
TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by "
    "an AI assistant to the user question displayed below. Your evaluation should consider factors such as "
    "the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin "
    "your evaluation by providing a short explanation. Be as objective as possible. After providing your "
    "explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
    '"[[rating]]", for example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n'
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_LOOSE = re.compile(r"\[(\d+\.?\d*)\]")  # FastChat's fallback pattern


class JudgeReport(BaseModel):
    judge: str
    graded: int
    unparsed: int
    skipped_no_text: int
    failed: int
    mean_score: float | None


def rating(text: str) -> float | None:
    """The score in [0, 1] from a judge's reply (``[[N]]``, N out of 10), or None without one."""
    match = _RATING.search(text) or _RATING_LOOSE.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return min(max(value / 10, 0.0), 1.0) if 0 <= value <= 10 else None


def prompt_for(record: TraceRecord) -> str | None:
    question = user_text(record)
    if question is None or record.answer is None:
        return None
    return TEMPLATE.format(question=question, answer=record.answer)


async def judge(
    coe: CoE, records: Sequence[TraceRecord], expert: str, concurrency: int = 2, max_tokens: int = 256
) -> tuple[list[Feedback], JudgeReport]:
    from coe.types import Message, Request

    prompts = [(r, p) for r in records if (p := prompt_for(r)) is not None]
    gate = asyncio.Semaphore(concurrency)
    out: list[Feedback] = []
    unparsed = failed = 0

    async def one(record: TraceRecord, prompt: str) -> None:
        nonlocal unparsed, failed
        request = Request(
            messages=[Message(role="system", content=SYSTEM), Message(role="user", content=prompt)],
            expert=expert,
            params={"max_tokens": max_tokens, "temperature": 0.0},
        )
        async with gate:
            answer = await coe.call_expert(expert, request)
        if not answer.ok:
            failed += 1
            return
        score = rating(answer.text)
        if score is None:
            unparsed += 1
            return
        out.append(Feedback(id=record.id, score=score, label="mt-bench-single", source=f"judge:{expert}"))

    await asyncio.gather(*(one(r, p) for r, p in prompts))
    return out, JudgeReport(
        judge=expert,
        graded=len(out),
        unparsed=unparsed,
        skipped_no_text=len(records) - len(prompts),
        failed=failed,
        mean_score=sum(f.score for f in out) / len(out) if out else None,
    )
