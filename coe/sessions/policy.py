"""The session policy, as a pure function: the new turn's own decision, what the session holds, and
how much the turn continues the conversation in, the decision to act on and why out.

The new turn is routed on its own (the stateless decision); that gives each expert a probability
``q``. The session's expert gets the continuation probability ``f`` on top:
``p(e) = (1 - f) * q(e) + f * [e is the kept expert]``. The turn switches to the best other expert
only when its ``p`` is at least ``switch_confidence`` and leads the kept expert's by at least
``switch_margin``; otherwise the kept expert answers. So a follow-up (``f`` near 1) stays whatever
the router thinks of it alone, and a new topic (``f`` near 0) goes where a first turn would.
A tool loop never switches: the expert that called the tool must read its result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from coe.types import RouteDecision

Action = Literal["new", "kept", "switched", "tool_loop"]


@dataclass(frozen=True)
class Kept:
    """What the session holds: the expert(s) that answered its last turn."""

    session: str
    expert: str
    experts: tuple[str, ...]
    category: str | None


@dataclass(frozen=True)
class Outcome:
    decision: RouteDecision
    action: Action
    reason: str
    p_new: float | None = None
    margin: float | None = None


def expert_probabilities(decision: RouteDecision, category_experts: Mapping[str, str]) -> dict[str, float]:
    """Each expert's probability in a decision: the sum over its categories when the router scores
    categories, else the router's weights, else its confidence in the chosen expert."""
    out: dict[str, float] = {}
    if decision.scores and all(c in category_experts for c in decision.scores):
        for category, p in decision.scores.items():
            out[category_experts[category]] = out.get(category_experts[category], 0.0) + p
        return out
    if decision.weights:
        total = sum(decision.weights.values()) or 1.0
        return {e: w / total for e, w in decision.weights.items()}
    return {decision.expert: decision.confidence if decision.confidence is not None else 1.0}


def steer(
    stateless: RouteDecision,
    kept: Kept | None,
    *,
    continuation: float,
    tool_loop: bool,
    category_experts: Mapping[str, str],
    switch_confidence: float,
    switch_margin: float,
) -> Outcome:
    if kept is None:
        return Outcome(stateless, "new", "a new conversation: routed on its first turn")
    if tool_loop:
        return Outcome(
            _keep(stateless, kept, None),
            "tool_loop",
            "a tool loop is open: the expert that called the tool reads its result",
        )
    q = expert_probabilities(stateless, category_experts)
    p = {e: (1 - continuation) * v for e, v in q.items()}
    p[kept.expert] = p.get(kept.expert, 0.0) + continuation
    best = max(p, key=lambda e: (p[e], e == kept.expert))
    lead = p[best] - p[kept.expert]
    if best == kept.expert:
        why = f"continuation {continuation:.2f}: the turn stays with {kept.expert!r} (p={p[best]:.2f})"
        return Outcome(_keep(stateless, kept, p[kept.expert]), "kept", why, p[best], 0.0)
    if p[best] >= switch_confidence and lead >= switch_margin:
        why = (
            f"switched from {kept.expert!r} to {best!r}: p={p[best]:.2f}, margin={lead:.2f}, "
            f"continuation {continuation:.2f}"
        )
        return Outcome(_retarget(stateless, best, why), "switched", why, p[best], lead)
    why = (
        f"{best!r} p={p[best]:.2f}, margin={lead:.2f} is below switch_confidence {switch_confidence:.2f} "
        f"or switch_margin {switch_margin:.2f} (continuation {continuation:.2f})"
    )
    return Outcome(_keep(stateless, kept, p[kept.expert]), "kept", why, p[best], lead)


def _keep(stateless: RouteDecision, kept: Kept, p: float | None) -> RouteDecision:
    recruited = list(kept.experts) or [kept.expert]
    rest = [e for e in stateless.experts if e not in recruited]
    return stateless.model_copy(
        update={
            "experts": recruited + rest,
            "fanout": len(recruited),
            "weights": {e: stateless.weights.get(e, 1.0) for e in recruited} if stateless.weights else {},
            "category": kept.category,
            "confidence": p,
            "fallback": False,
            "reason": f"kept expert {kept.expert!r} for session {kept.session}",
        }
    )


def _retarget(stateless: RouteDecision, expert: str, why: str) -> RouteDecision:
    if stateless.expert == expert:
        return stateless.model_copy(update={"reason": f"{why}; {stateless.reason}"})
    return stateless.model_copy(
        update={
            "experts": [expert] + [e for e in stateless.experts if e != expert],
            "fanout": 1,
            "reason": f"{why}; {stateless.reason}",
        }
    )
