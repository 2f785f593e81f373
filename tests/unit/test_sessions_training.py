"""``coe sessions fit`` (coe.sessions.training.fit) on synthetic conversations: a stand-in encoder puts
each topic's turns near one another, and a stand-in router sends half the follow-ups, read alone, to
another expert, as short follow-ups ("and in Rust?") are. The fitted model must keep those follow-ups
with the conversation's expert and still let new topics switch, within the limit the caller set."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from coe.errors import CoEError
from coe.sessions.training import CONFIDENCE_GRID, MARGIN_GRID, Conversation, fit
from coe.types import RouteDecision

TOPICS = ("code", "math", "story", "cooking", "travel", "law")
EXPERTS = {t: f"{t}_expert" for t in TOPICS}


class TopicEncoder:
    """Unit vectors: the topic's direction plus noise fixed by the text."""

    space = "test-topics"

    def encode(self, texts: list[str], max_tokens: int | None = None) -> np.ndarray:
        rows = []
        for text in texts:
            topic = np.random.default_rng(TOPICS.index(text.split()[0])).normal(size=24)
            noise = np.random.default_rng(zlib.crc32(text.encode())).normal(size=24)
            v = topic + 0.8 * noise
            rows.append(v / np.linalg.norm(v))
        return np.array(rows, dtype=np.float32)


def route(texts: list[str]) -> list[RouteDecision]:
    """A first turn goes to its topic's expert; every other follow-up, alone, looks like the next topic."""
    out = []
    for text in texts:
        topic = TOPICS.index(text.split()[0])
        if " follow-up " in text and zlib.crc32(text.encode()) % 2:
            topic = (topic + 1) % len(TOPICS)
        scores = {t: 0.04 for t in TOPICS} | {TOPICS[topic]: 0.8}
        out.append(
            RouteDecision(
                router="category", experts=[EXPERTS[TOPICS[topic]]], category=TOPICS[topic], scores=scores
            )
        )
    return out


def conversations(n: int) -> list[Conversation]:
    return [
        Conversation(str(i), (f"{TOPICS[i % 6]} question {i}", f"{TOPICS[i % 6]} follow-up {i} please"))
        for i in range(n)
    ]


STANDALONE = [f"{TOPICS[i % 6]} standalone prompt {i}" for i in range(30)]


def test_followups_stay_new_topics_switch_and_a_seed_gives_the_same_model() -> None:
    model, report = fit(
        conversations(120),
        STANDALONE,
        TopicEncoder(),
        route,
        dict(zip(TOPICS, EXPERTS.values(), strict=True)),
        max_followup_switch=0.05,
    )
    fitted, held = report["fit"], report["validation"]
    # Alone, the router would move half the follow-ups; the model keeps them, on held-out ones too.
    assert fitted.followup_switch_rate <= 0.05 and held.followup_switch_rate <= 0.1
    assert fitted.topic_switch_recall > 0.8 and held.topic_switch_recall > 0.8
    assert model.header.switch_confidence in CONFIDENCE_GRID and model.header.switch_margin in MARGIN_GRID
    assert model.header.trained_on["conversations"] == fitted.followups
    assert model.header.validation["validation_followup_switch_rate"] == held.followup_switch_rate
    again, _ = fit(
        conversations(120),
        STANDALONE,
        TopicEncoder(),
        route,
        dict(zip(TOPICS, EXPERTS.values(), strict=True)),
        max_followup_switch=0.05,
    )
    assert np.array_equal(again.coef, model.coef) and again.intercept == model.intercept


def test_too_few_conversations_or_an_impossible_limit_is_an_error() -> None:
    experts = dict(zip(TOPICS, EXPERTS.values(), strict=True))
    with pytest.raises(CoEError, match=r"need at least 8 two-turn conversations to fit, got \d"):
        fit(conversations(7), [], TopicEncoder(), route, experts)
    with pytest.raises(CoEError, match="no threshold keeps the follow-up switch rate at or below -1"):
        fit(conversations(60), STANDALONE, TopicEncoder(), route, experts, max_followup_switch=-1)
