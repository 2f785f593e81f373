"""Offline evaluation of skill-based recruitment on stored per-model outcomes (no LLM calls).

Profiles come from the training prompts: a skill vocabulary is built from them (``routers.skills.vocab``:
distinctive content words of k-means clusters of the questions), every prompt gets its nearest
vocabulary entries as keywords (the router's embedding fast path), and each model scores +1/-1 per
keyword by its stored outcome. Each test prompt then recruits models exactly as the skills router
does (``routers.skills.recruit``), and their stored responses are voted on (``coe.answers``).

Correctness without a gold column (RouterBench stores only per-model 0/1 outcomes): a voted answer is
correct when it equals the extracted answer of some model whose stored outcome on that prompt is
correct. When no recruited answer can be extracted (MBPP's code), the highest-weighted recruited
model's answer stands, and its stored outcome decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from coe.answers import extract_for_prompt, majority
from routers.skills.recruit import KSpec, Recruiter, score_matrix
from routers.skills.text import question_texts
from routers.skills.vocab import vocabulary_keywords

if TYPE_CHECKING:
    import numpy as np

    from coe.evaluation.outcomes import OutcomeTable
    from routers.skills.keywords import Vocabulary

Encode = Callable[[list[str]], "np.ndarray"]

CORRECTNESS_RULE = (
    "a voted answer is correct if it equals the extracted answer of a model whose stored outcome is "
    "correct; with no extractable answer, the highest-weighted recruited model's stored outcome counts"
)


class Named(BaseModel):
    name: str
    accuracy: float


class Score(BaseModel):
    accuracy: float


class TaskResult(BaseModel):
    n: int
    accuracy: float
    mean_k: float
    best_single: Named


class RecruitEval(BaseModel):
    """The JSON of ``coe eval recruit --json``."""

    format: str
    n_train: int
    n_test: int
    k: KSpec
    top_p: float | None = None
    min_k: int | None = None
    max_k: int | None = None
    sampling: bool = False
    aggregator: Literal["vote"] = "vote"
    accuracy: float
    mean_k: float = Field(description="models called per prompt")
    k_histogram: dict[str, int]
    best_single: Named = Field(description="the model with the best accuracy on the test prompts")
    oracle: Score = Field(description="a prompt counts when any model got it right")
    cost_per_prompt: float = Field(description="summed cost of the recruited models, in cost_unit")
    best_single_cost_per_prompt: float
    cost_unit: str
    decided_by_vote: float = Field(description="share of prompts where an extracted answer won the vote")
    models: dict[str, float] = Field(description="each model's test accuracy")
    per_task: dict[str, TaskResult]
    vocabulary_size: int
    vocabulary_sample: list[str]
    keywords_per_prompt: int
    correctness: str = CORRECTNESS_RULE


def build_recruiter(
    train: OutcomeTable,
    encode: Encode,
    k: KSpec,
    keywords: int = 3,
    **settings: object,
) -> tuple[Recruiter, Vocabulary, set[str]]:
    """Vocabulary and profiles from the training table; returns the boilerplate lines found too."""
    texts, boilerplate = question_texts(train.prompts)
    vocab, nearest = vocabulary_keywords(texts, sorted(set(train.tasks)), encode, keywords)
    index = [[vocab.index[word] for word in row] for row in nearest]
    scores = score_matrix(index, train.quality >= 0.5, len(vocab.words))
    return Recruiter(list(train.models), scores, k=k, **settings), vocab, boilerplate  # type: ignore[arg-type]


def evaluate(
    train: OutcomeTable,
    test: OutcomeTable,
    encode: Encode,
    k: KSpec,
    top_p: float = 0.5,
    min_k: int = 1,
    max_k: int = 3,
    keywords: int = 3,
    sampling: bool = False,
    sharpness: float = 2.0,
) -> RecruitEval:
    import numpy as np

    settings = {"top_p": top_p, "min_k": min_k, "max_k": max_k, "sampling": sampling, "sharpness": sharpness}
    recruiter, vocab, boilerplate = build_recruiter(train, encode, k, keywords, **settings)
    texts, _ = question_texts(test.prompts, boilerplate)
    nearest = vocab.nearest(encode(texts), keywords)
    models = list(test.models)
    right = test.quality >= 0.5
    correct, calls, cost, voted = [], [], [], 0
    for i, prompt in enumerate(test.prompts):
        choice = recruiter.recruit([vocab.index[m.keyword] for m in nearest[i]], texts[i])
        chosen = choice.recruitment.chosen
        responses = test.responses[i] if test.responses is not None else {}
        weights = {models[j]: float(choice.weights[j]) for j in chosen}
        extracted = {models[j]: extract_for_prompt(prompt, responses.get(models[j], "")) for j in chosen}
        winner, _ = majority(list(extracted.items()), weights)
        if winner is None:
            correct.append(bool(right[i, chosen[0]]))
        else:
            voted += 1
            good = {  # the right models' answers; the recruited ones are extracted already
                extracted[m] if m in extracted else extract_for_prompt(prompt, responses.get(m, ""))
                for m, r in zip(models, right[i], strict=True)
                if r
            }
            correct.append(winner in good)
        calls.append(len(chosen))
        cost.append(float(test.cost[i, chosen].sum()))
    per_model = test.quality.mean(axis=0) if len(test) else np.zeros(len(models))
    best = int(np.argmax(per_model))
    hits, ks = np.array(correct, dtype=float), np.array(calls, dtype=float)
    return RecruitEval(
        format=test.format,
        n_train=len(train),
        n_test=len(test),
        k=k,
        top_p=top_p if k == "dynamic" else None,
        min_k=min_k if k == "dynamic" else None,
        max_k=max_k if k == "dynamic" else None,
        sampling=sampling,
        accuracy=round(float(hits.mean()), 4),
        mean_k=round(float(ks.mean()), 3),
        k_histogram={str(c): n for c, n in sorted(Counter(calls).items())},
        best_single=Named(name=models[best], accuracy=round(float(per_model[best]), 4)),
        oracle=Score(accuracy=round(float(right.any(axis=1).mean()), 4)),
        cost_per_prompt=round(float(np.mean(cost)), 6),
        best_single_cost_per_prompt=round(float(test.cost[:, best].mean()), 6),
        cost_unit=test.cost_unit,
        decided_by_vote=round(voted / max(len(test), 1), 4),
        models={m: round(float(a), 4) for m, a in zip(models, per_model, strict=True)},
        per_task=_per_task(test, hits, ks, models),
        vocabulary_size=len(vocab.words),
        vocabulary_sample=vocab.words[:24],
        keywords_per_prompt=keywords,
    )


def _per_task(
    test: OutcomeTable, hits: np.ndarray, ks: np.ndarray, models: Sequence[str]
) -> dict[str, TaskResult]:
    import numpy as np

    out = {}
    for task in sorted(set(test.tasks)):
        idx = [i for i, t in enumerate(test.tasks) if t == task]
        acc = test.quality[idx].mean(axis=0)
        best = int(np.argmax(acc))
        out[task] = TaskResult(
            n=len(idx),
            accuracy=round(float(hits[idx].mean()), 4),
            mean_k=round(float(ks[idx].mean()), 3),
            best_single=Named(name=models[best], accuracy=round(float(acc[best]), 4)),
        )
    return out
