"""``coe sessions fit``: the continuation model and the switch thresholds, from conversations.

Data: two-turn conversations in MT-Bench's shape (``{"question_id", "turns": [first, follow-up]}``)
give the follow-ups; their first turns, and standalone prompts (Vicuna-Bench ``turns[0]``, Arena-Hard
``prompt``), give new topics: a first turn of one conversation asked as the next turn of another.
The conversations are split by a hash of their id; the model and the thresholds are fitted on one part
and measured on the other, so the numbers the fit reports are held out.

The thresholds are picked on out-of-fold continuation probabilities (never a probability the model
was trained on): the pair with the highest topic-switch recall whose follow-up switch rate stays at
or below ``max_followup_switch``, among a grid.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coe.data.jsonl import raise_problems, read_jsonl
from coe.errors import CoEError
from coe.sessions.continuation import ContinuationHeader, ContinuationModel, features
from coe.sessions.policy import Kept, steer

if TYPE_CHECKING:
    import numpy as np

    from coe.encoding.embedder import Embedder
    from coe.types import RouteDecision

VALIDATION_SHARE = 30  # percent of conversations held out of the fit
CONFIDENCE_GRID = (0.0, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
MARGIN_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
_FOLDS = 8
_POSITIVE_WEIGHT = 20.0  # follow-ups are few next to the new-topic pairs; a missed one costs more


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[str, ...]


def read_conversations(path: Path) -> list[Conversation]:
    """Conversations in MT-Bench's shape; one error naming every bad line."""
    out, problems = [], []
    for n, row in read_jsonl(path, CoEError):
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns:
            problems.append(f"{path}:{n}: no turns")
            continue
        out.append(Conversation(str(row.get("question_id", row.get("id", n))), tuple(str(t) for t in turns)))
    raise_problems(problems, CoEError)
    return out


def read_prompts(path: Path) -> list[str]:
    """Standalone prompts: ``prompt`` (Arena-Hard), else the first of ``turns`` (Vicuna-Bench)."""
    prompts, problems = [], []
    for n, row in read_jsonl(path, CoEError):
        turns = row.get("turns")
        if "prompt" in row:
            prompts.append(str(row["prompt"]))
        elif isinstance(turns, list) and turns:
            prompts.append(str(turns[0]))
        else:
            problems.append(f"{path}:{n}: no prompt or turns")
    raise_problems(problems, CoEError)
    return prompts


def held_out(conversation: Conversation) -> bool:
    return int(hashlib.sha1(conversation.id.encode()).hexdigest(), 16) % 100 < VALIDATION_SHARE


@dataclass
class Pairs:
    """(earlier turn, new turn) pairs: follow-ups (label 1) and new topics (label 0)."""

    previous: list[int]
    current: list[int]
    labels: list[int]


@dataclass
class Measured:
    followup_switch_rate: float
    topic_switch_recall: float
    followups: int
    topic_pairs: int


class _Turns:
    """The fit part's two turns per conversation and the standalone prompts, embedded once; a pair
    is two indices into them. One random generator draws every new-topic pair, in a fixed order, so
    a seed gives the same fit."""

    def __init__(
        self,
        fit_part: Sequence[Conversation],
        standalone: Sequence[str],
        embedder: Embedder,
        max_tokens: int | None,
        seed: int,
    ) -> None:
        import numpy as np

        self.texts = [t for c in fit_part for t in c.turns[:2]] + list(standalone)
        self.vectors = embedder.encode(self.texts, max_tokens)
        self.first = np.arange(0, 2 * len(fit_part), 2)  # a conversation's opening turn
        self.second = self.first + 1  # its follow-up
        self.alone = np.arange(2 * len(fit_part), len(self.texts))
        self.rng = np.random.default_rng(seed)

    def pairs(self, convs: np.ndarray) -> Pairs:
        """The follow-ups of ``convs``, and new topics: another conversation's opening turn (8 per
        conversation) and a standalone prompt (10 per conversation) asked after an opening turn."""
        rng, first, alone = self.rng, self.first, self.alone
        prev, cur, y = list(first[convs]), list(self.second[convs]), [1] * len(convs)
        i, j = rng.choice(convs, 8 * len(convs)), rng.choice(convs, 8 * len(convs))
        keep = i != j
        prev += list(first[i[keep]])
        cur += list(first[j[keep]])
        y += [0] * int(keep.sum())
        if len(alone):
            k = rng.choice(len(alone), 10 * len(convs))
            prev += list(first[rng.choice(convs, len(k))])
            cur += list(alone[k])
            y += [0] * len(k)
        return Pairs(prev, cur, y)

    def row(self, current: int, previous: int) -> np.ndarray:
        """How much turn ``current`` continues turn ``previous``, as the model's input."""
        return features(self.vectors[current], self.vectors[previous], self.texts[current])

    def matrix(self, p: Pairs) -> np.ndarray:
        import numpy as np

        return np.stack([self.row(c, q) for q, c in zip(p.previous, p.current, strict=True)])


def fit(
    conversations: Sequence[Conversation],
    standalone: Sequence[str],
    embedder: Embedder,
    route: Callable[[list[str]], list[RouteDecision]],
    category_experts: dict[str, str],
    max_tokens: int | None = 48,
    max_followup_switch: float = 0.05,
    seed: int = 0,
) -> tuple[ContinuationModel, dict[str, Measured]]:
    """Fit on the conversations outside the held-out share; report both parts."""
    import numpy as np

    fit_part = [c for c in conversations if not held_out(c) and len(c.turns) >= 2]
    val_part = [c for c in conversations if held_out(c) and len(c.turns) >= 2]
    if len(fit_part) < _FOLDS:
        raise CoEError(f"need at least {_FOLDS} two-turn conversations to fit, got {len(fit_part)}")
    turns = _Turns(fit_part, standalone, embedder, max_tokens, seed)
    f_follow, f_first = _out_of_fold(turns, len(fit_part))
    decisions = route([c.turns[0] for c in fit_part] + [c.turns[1] for c in fit_part])
    d1, d2 = decisions[: len(fit_part)], decisions[len(fit_part) :]
    conf, margin = _thresholds(d1, d2, f_follow, f_first, category_experts, max_followup_switch)
    final = turns.pairs(np.arange(len(fit_part)))
    clf = _fit_logreg(turns.matrix(final), np.array(final.labels))
    header = ContinuationHeader(
        space=embedder.space,
        max_tokens=max_tokens,
        switch_confidence=conf,
        switch_margin=margin,
        trained_on={
            "conversations": len(fit_part),
            "standalone": len(standalone),
            "pairs": len(final.labels),
        },
    )
    model = ContinuationModel(header, clf[0].astype(np.float32), float(clf[1]))
    report = {"fit": _measure(d1, d2, f_follow, f_first, category_experts, conf, margin)}
    if val_part:
        report["validation"] = measure(model, val_part, embedder, route, category_experts)
    header.validation = {
        f"{part}_{key}": float(getattr(m, key))
        for part, m in report.items()
        for key in ("followup_switch_rate", "topic_switch_recall")
    }
    return model, report


def _out_of_fold(turns: _Turns, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuation probabilities for each follow-up (``[i]``) and for every new-topic pair (``[i, j]``:
    conversation ``j``'s opening turn asked after ``i``'s), each from a model whose fold left
    conversation ``j`` out, so the thresholds are never picked on probabilities the model was fitted on."""
    import numpy as np

    folds = np.arange(n) % _FOLDS
    f_follow = np.zeros(n)
    f_first = np.zeros((n, n))
    for k in range(_FOLDS):
        train = np.flatnonzero(folds != k)
        test = np.flatnonzero(folds == k)
        p_train = turns.pairs(train)
        clf = _fit_logreg(turns.matrix(p_train), np.array(p_train.labels))
        f_follow[test] = _predict(clf, np.stack([turns.row(turns.second[c], turns.first[c]) for c in test]))
        for j in test:  # the new topic's turn is from the held-out fold
            rows = np.stack([turns.row(turns.first[j], turns.first[i]) for i in range(n)])
            f_first[:, j] = _predict(clf, rows)
    return f_follow, f_first


def _thresholds(
    d1: Sequence[RouteDecision],
    d2: Sequence[RouteDecision],
    f_follow: np.ndarray,
    f_first: np.ndarray,
    category_experts: dict[str, str],
    max_followup_switch: float,
) -> tuple[float, float]:
    """The (confidence, margin) pair of the grid with the best topic-switch recall among those whose
    follow-up switch rate stays within ``max_followup_switch``."""
    best: tuple[float, float, float, float] | None = None
    for conf, margin in itertools.product(CONFIDENCE_GRID, MARGIN_GRID):
        m = _measure(d1, d2, f_follow, f_first, category_experts, conf, margin)
        if m.followup_switch_rate <= max_followup_switch and (
            best is None or m.topic_switch_recall > best[0]
        ):
            best = (m.topic_switch_recall, -m.followup_switch_rate, conf, margin)
    if best is None:
        raise CoEError(f"no threshold keeps the follow-up switch rate at or below {max_followup_switch}")
    return best[2], best[3]


def measure(
    model: ContinuationModel,
    conversations: Sequence[Conversation],
    embedder: Embedder,
    route: Callable[[list[str]], list[RouteDecision]],
    category_experts: dict[str, str],
) -> Measured:
    """The follow-up switch rate and topic-switch recall of a fitted model on conversations."""
    import numpy as np

    convs = [c for c in conversations if len(c.turns) >= 2]
    v = embedder.encode([t for c in convs for t in c.turns[:2]], model.header.max_tokens)
    first, second = v[0::2], v[1::2]
    f_follow = np.array([model.probability(second[i], first[i], c.turns[1]) for i, c in enumerate(convs)])
    f_first = np.array(
        [
            [model.probability(first[j], first[i], convs[j].turns[0]) for j in range(len(convs))]
            for i in range(len(convs))
        ]
    )
    decisions = route([c.turns[0] for c in convs] + [c.turns[1] for c in convs])
    h = model.header
    return _measure(
        decisions[: len(convs)],
        decisions[len(convs) :],
        f_follow,
        f_first,
        category_experts,
        h.switch_confidence,
        h.switch_margin,
    )


def _measure(
    d1: Sequence[RouteDecision],
    d2: Sequence[RouteDecision],
    f_follow: np.ndarray,
    f_first: np.ndarray,
    category_experts: dict[str, str],
    conf: float,
    margin: float,
) -> Measured:
    def answered_by(kept: RouteDecision, new: RouteDecision, f: float) -> str:
        """Who answers the new turn of a session held by ``kept``'s expert."""
        k = Kept("s", kept.expert, (kept.expert,), kept.category)
        out = steer(new, k, continuation=f, tool_loop=False, category_experts=category_experts,
                    switch_confidence=conf, switch_margin=margin)  # fmt: skip
        return out.decision.expert

    n = len(d1)
    follow = sum(answered_by(d1[i], d2[i], float(f_follow[i])) != d1[i].expert for i in range(n))
    topic = [(i, j) for i in range(n) for j in range(n) if i != j and d1[i].expert != d1[j].expert]
    hit = sum(answered_by(d1[i], d1[j], float(f_first[i, j])) == d1[j].expert for i, j in topic)
    return Measured(follow / n if n else 0.0, hit / len(topic) if topic else 0.0, n, len(topic))


def _fit_logreg(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    weights = np.where(y == 1, _POSITIVE_WEIGHT, 1.0)
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(x, y, sample_weight=weights)
    return clf.coef_[0], float(clf.intercept_[0])


def _predict(model: tuple[np.ndarray, float], x: np.ndarray) -> np.ndarray:
    import numpy as np

    z = x @ model[0] + model[1]
    out: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return out
