"""Build a skill profile: every expert answers every validation question, answers are graded, and
each expert scores +1 (right) or -1 (wrong) on every keyword of every question.

The experts' answers are run through ``CoE.batch`` (pinned items, grouped by expert, each expert
loaded once). Keywords come from the embedding fast path over a vocabulary built from the questions
(``routers.skills.vocab``), or from an annotator expert, as the skills router will find them at run time.
Then the aggregator is chosen: on questions where some experts were right and some wrong, each
candidate is given all answers with the synthesis prompt, and the one right most often is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from coe.types import ExpertAnswer, Request
from routers.skills.keywords import ANNOTATOR_PARAMS, ANNOTATOR_PROMPT, Vocabulary, parse_keywords, recurring
from routers.skills.profile import (
    AggregatorChoice,
    CategoryScore,
    ExpertSkills,
    SkillProfile,
    expert_fingerprint,
    registry_fingerprint,
)
from routers.skills.qa import QAItem, grade
from routers.skills.recruit import score_matrix
from routers.skills.vocab import vocabulary_keywords

if TYPE_CHECKING:
    import numpy as np

    from coe.orchestrator import CoE

Progress = Callable[[str], None]


async def ask_all(coe: CoE, jobs: Sequence[tuple[str, Request]]) -> list[ExpertAnswer]:
    """Each (expert, request) answered through the batch runner; results in input order."""
    from coe.batch.runner import run_batch

    items = [
        {"id": i, "messages": [m.model_dump() for m in r.messages], "expert": name, "params": r.params}
        for i, (name, r) in enumerate(jobs)
    ]
    report = await run_batch(coe, items)
    found = report.by_id()
    out = []
    for i, (name, _) in enumerate(jobs):
        result = found.get(str(i))
        if result is None or not result.ok:
            out.append(ExpertAnswer(expert=name, error=result.error if result else "no result"))
        else:
            out.append(ExpertAnswer(expert=name, text=result.answer or ""))
    return out


async def annotate(coe: CoE, annotator: str, questions: Sequence[str], samples: int) -> list[list[str]]:
    """Recurring keywords per question from ``samples`` sampled annotator replies."""
    ask = [
        Request.from_input(ANNOTATOR_PROMPT.format(question=q), params=dict(ANNOTATOR_PARAMS))
        for q in questions
    ]
    replies = await ask_all(coe, [(annotator, r) for r in ask for _ in range(samples)])
    raw = [
        [parse_keywords(a.text) for a in replies[i * samples : (i + 1) * samples] if a.ok]
        for i in range(len(ask))
    ]
    return [recurring(s) for s in raw]


def keywords_by_embedding(
    items: Sequence[QAItem], encode: Callable[[list[str]], np.ndarray], n: int
) -> tuple[Vocabulary, list[list[str]]]:
    return vocabulary_keywords([i.question for i in items], sorted({i.category for i in items}), encode, n)


def keywords_by_annotator(
    kept: list[list[str]], fast: list[list[str]], vocab: Vocabulary, encode: Callable[[list[str]], np.ndarray]
) -> tuple[Vocabulary, list[list[str]], int]:
    """Vocabulary = the fast-path vocabulary plus every kept annotator keyword; a question whose
    annotation kept nothing uses its fast-path keywords. Returns how many fell back."""
    extra = [k for k in dict.fromkeys(k for ks in kept for k in ks) if k not in vocab.index]
    words = vocab.words + extra
    merged = Vocabulary(words, encode(words)) if extra else vocab
    chosen = [ks if ks else fb for ks, fb in zip(kept, fast, strict=True)]
    return merged, chosen, sum(1 for ks in kept if not ks)


def expert_skills(
    coe: CoE, name: str, items: Sequence[QAItem], right: Sequence[bool], scores: dict[str, float]
) -> ExpertSkills:
    categories: dict[str, CategoryScore] = {}
    for item, ok in zip(items, right, strict=True):
        cat = categories.setdefault(item.category, CategoryScore())
        cat.n += 1
        cat.correct += int(ok)
    expert = coe.config.experts[name]
    return ExpertSkills(
        fingerprint=expert_fingerprint(expert),
        model=expert.model,
        scores={k: v for k, v in scores.items() if v},
        n=len(items),
        correct=sum(right),
        categories=categories,
    )


async def choose_aggregator(
    coe: CoE,
    experts: list[str],
    items: Sequence[QAItem],
    answers: dict[str, list[ExpertAnswer]],
    correct: np.ndarray,
    limit: int,
    overall: dict[str, float],
    settings: Callable[[QAItem], dict[str, Any]],
) -> AggregatorChoice:
    """The expert best at producing the right answer from mixed right and wrong candidates."""
    from aggregators.synthesize import SynthesizeAggregator

    mixed = [q for q in range(len(items)) if 0 < correct[q].sum() < len(experts)][:limit]
    if not mixed or len(experts) < 2:
        best = max(experts, key=lambda e: overall[e])
        why = "no validation question had both right and wrong answers" if mixed == [] else "one expert only"
        return AggregatorChoice(expert=best, reason=f"{why}: the most accurate expert", n=0)
    writer = SynthesizeAggregator()
    jobs = []
    for q in mixed:
        candidates = [answers[e][q] for e in experts if answers[e][q].ok]
        jobs += [
            (
                e,
                writer.synthesis_request(
                    Request.from_input(items[q].prompt, params=settings(items[q])), candidates
                ),
            )
            for e in experts
        ]
    replies = await ask_all(coe, jobs)
    accuracy = {}
    for j, e in enumerate(experts):
        replies_e = [replies[i * len(experts) + j] for i in range(len(mixed))]
        hits = sum(
            grade(items[q].grader, a.text, items[q].gold) for a, q in zip(replies_e, mixed, strict=True)
        )
        accuracy[e] = round(hits / len(mixed), 4)
    best = max(experts, key=lambda e: (accuracy[e], overall[e]))
    return AggregatorChoice(
        expert=best,
        accuracy=accuracy,
        n=len(mixed),
        reason=f"right most often ({accuracy[best]:.2f}) when synthesising {len(mixed)} mixed questions",
    )


async def build_profile(
    coe: CoE,
    items: Sequence[QAItem],
    grader: str,
    encode: Callable[[list[str]], np.ndarray],
    experts: Sequence[str] | None = None,
    annotator: str | None = None,
    samples: int = 3,
    keywords: int = 3,
    aggregator_questions: int = 20,
    params: dict[str, Any] | Callable[[QAItem], dict[str, Any]] | None = None,
    sources: Sequence[str] = (),
    progress: Progress | None = None,
) -> SkillProfile:
    """``grader`` is recorded (each item is graded by its own); ``params`` are generation settings,
    or a function giving them per item (a number question needs more tokens than a letter)."""
    import numpy as np

    say = progress or (lambda _: None)
    names = list(experts or coe.config.experts)
    say(f"{len(names)} experts x {len(items)} questions")
    settings = params if callable(params) else (lambda _: dict(params or {}))
    jobs = [(e, Request.from_input(item.prompt, params=settings(item))) for e in names for item in items]
    flat = await ask_all(coe, jobs)
    answers = {e: flat[j * len(items) : (j + 1) * len(items)] for j, e in enumerate(names)}
    correct = np.array(
        [
            [a.ok and grade(it.grader, a.text, it.gold) for a, it in zip(answers[e], items, strict=True)]
            for e in names
        ]
    ).T
    failed = {e: sum(not a.ok for a in answers[e]) for e in names}
    say("accuracy: " + ", ".join(f"{e} {correct[:, j].mean():.3f}" for j, e in enumerate(names)))
    vocab, chosen = await asyncio.to_thread(keywords_by_embedding, items, encode, keywords)
    keywords_from = "embedding"
    if annotator is not None:
        kept = await annotate(coe, annotator, [i.question for i in items], samples)
        vocab, chosen, fell_back = keywords_by_annotator(kept, chosen, vocab, encode)
        keywords_from = f"annotator:{annotator}"
        say(f"annotator {annotator}: {fell_back} of {len(items)} questions kept no keyword (embedding used)")
    index = [[vocab.index[k] for k in ks] for ks in chosen]
    scores = score_matrix(index, correct, len(vocab.words))
    overall = {e: float(correct[:, j].mean()) for j, e in enumerate(names)}
    choice = await choose_aggregator(
        coe, names, items, answers, correct, aggregator_questions, overall, settings
    )
    say(f"aggregator: {choice.expert} ({choice.reason})")
    profile_experts = {
        e: expert_skills(coe, e, items, list(correct[:, j]), dict(zip(vocab.words, scores[j], strict=True)))
        for j, e in enumerate(names)
    }
    for e, n in failed.items():
        if n:
            say(f"warning: {e} failed on {n} of {len(items)} questions (graded wrong)")
    return SkillProfile(
        sources=list(sources),
        grader=grader,
        encoder=coe.config.embedder.model,
        keywords_from=keywords_from,
        vocabulary=vocab.words,
        registry_fingerprint=registry_fingerprint(coe.config),
        n_questions=len(items),
        experts=profile_experts,
        aggregator=choice,
    )
